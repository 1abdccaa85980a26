"""Web Push adapter: payload encrypted by pywebpush (RFC 8291, aes128gcm), VAPID-signed
(RFC 8292), POSTed with httpx like the webhooks."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from py_vapid import Vapid  # type: ignore[import-untyped]
from pywebpush import WebPusher  # type: ignore[import-untyped]

from epm_notify.retry import NotDelivered, Outcome, outcome_of_status

TTL_SECONDS = 24 * 3600
GONE = frozenset({404, 410})  # the browser unsubscribed: the channel is dead


class PushSender:
    def __init__(self, client: httpx.AsyncClient, vapid: Vapid, subject: str) -> None:
        self.client = client
        self.vapid = vapid
        self.subject = subject

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
        try:
            resp = await self.client.post(endpoint, content=body, headers=headers)
        except httpx.TimeoutException:
            return NotDelivered("push service timed out")
        except httpx.TransportError as exc:
            return NotDelivered(f"push service unreachable ({type(exc).__name__})")
        if resp.status_code in GONE:
            return NotDelivered(f"push subscription is gone (HTTP {resp.status_code})", True)
        return outcome_of_status(resp.status_code, "push service")
