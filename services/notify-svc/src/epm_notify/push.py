"""Web Push adapter: payload encrypted by pywebpush (RFC 8291, aes128gcm), VAPID-signed
(RFC 8292), POSTed like the webhooks."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from py_vapid import Vapid  # type: ignore[import-untyped]
from pywebpush import WebPusher  # type: ignore[import-untyped]

from epm_notify.retry import NotDelivered, Outcome
from epm_notify.webhook import post

TTL_SECONDS = 24 * 3600


class PushSender:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        vapid: Vapid,
        subject: str,
        *,
        allow_private: bool = False,
    ) -> None:
        self.session = session
        self.vapid = vapid
        self.subject = subject
        self.allow_private = allow_private  # as webhooks: EPM_NOTIFY_ALLOW_PRIVATE_WEBHOOKS

    async def send(
        self, target: dict[str, Any], secret: str | None, notification_id: str, payload: bytes
    ) -> Outcome:
        if not secret:
            return NotDelivered("push channel has no subscription keys", permanent=True)
        endpoint = target["endpoint"]
        subscription = {"endpoint": endpoint, "keys": orjson.loads(secret)}
        body = WebPusher(subscription).encode(payload, "aes128gcm")["body"]
        url = urlsplit(endpoint)
        claims = {
            "sub": self.subject,
            "aud": f"{url.scheme}://{url.netloc}",
            "exp": int(time.time()) + 12 * 3600,
        }
        headers = {
            **self.vapid.sign(claims),
            "content-encoding": "aes128gcm",
            "content-type": "application/octet-stream",
            "ttl": str(TTL_SECONDS),
            "urgency": "high",
            "topic": notification_id.replace("-", "")[:32],
        }
        # 404/410 (the browser unsubscribed) are permanent like any other 4xx but 408/429
        return await post(
            self.session, endpoint, body, headers, "push service", allow_private=self.allow_private
        )
