"""Webhook adapter: one signed POST per try, short timeouts.

aiohttp rather than httpx: on this machine an httpx POST cost about ten times
the CPU of an aiohttp one (2.6 ms against 0.28 ms, receiver included), which
under load is the difference between keeping up with 100 requests/s and not.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp

from epm_notify.retry import NotDelivered, Outcome, outcome_of_status
from epm_notify.signing import signed_headers

USER_AGENT = "EPM-notify/1"


class WebhookSender:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def send(
        self, target: dict[str, Any], secret: str | None, notification_id: str, payload: bytes
    ) -> Outcome:
        if not secret:
            return NotDelivered("webhook channel has no signing secret", permanent=True)
        headers = signed_headers(secret, notification_id, int(time.time()), payload)
        headers["content-type"] = "application/cloudevents+json"
        headers["user-agent"] = USER_AGENT
        return await post(self.session, target["url"], payload, headers, "webhook")


async def post(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str], what: str
) -> Outcome:
    try:
        async with session.post(url, data=body, headers=headers, allow_redirects=False) as resp:
            status = resp.status
    except TimeoutError:
        return NotDelivered(f"{what} timed out")
    except (aiohttp.ClientError, OSError) as exc:
        return NotDelivered(f"{what} unreachable ({type(exc).__name__})")
    return outcome_of_status(status, what)
