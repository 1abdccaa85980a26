"""Webhook adapter: one signed POST per try (httpx, short timeouts)."""

from __future__ import annotations

import time
from typing import Any

import httpx

from epm_notify.retry import NotDelivered, Outcome, outcome_of_status
from epm_notify.signing import signed_headers

USER_AGENT = "EPM-notify/1"


class WebhookSender:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def send(
        self, target: dict[str, Any], secret: str | None, notification_id: str, payload: bytes
    ) -> Outcome:
        if not secret:
            return NotDelivered("webhook channel has no signing secret", permanent=True)
        headers = signed_headers(secret, notification_id, int(time.time()), payload)
        headers["content-type"] = "application/cloudevents+json"
        headers["user-agent"] = USER_AGENT
        try:
            resp = await self.client.post(target["url"], content=payload, headers=headers)
        except httpx.TimeoutException:
            return NotDelivered("webhook timed out")
        except httpx.TransportError as exc:
            return NotDelivered(f"webhook unreachable ({type(exc).__name__})")
        return outcome_of_status(resp.status_code, "webhook")
