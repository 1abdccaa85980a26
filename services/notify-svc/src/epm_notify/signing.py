"""Standard Webhooks signatures (API.md, "Webhooks"). Pure.

``webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">``, keyed
with the base64 part of the channel's ``whsec_`` secret, decoded.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from epm_notify.channels import webhook_key

WEBHOOK_ID = "webhook-id"
WEBHOOK_TIMESTAMP = "webhook-timestamp"
WEBHOOK_SIGNATURE = "webhook-signature"


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    mac = hmac.new(webhook_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signed_headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        WEBHOOK_ID: msg_id,
        WEBHOOK_TIMESTAMP: str(timestamp),
        WEBHOOK_SIGNATURE: signature(secret, msg_id, timestamp, body),
    }
