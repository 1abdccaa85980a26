"""``offline generate``: the device asks approval-svc for one of its own offline access codes.

A signed device command (docs/internal-contracts.md, "Device commands"):
``epm.devrpc.<tenant>.<device>.self_generate_code`` with ``Nats-Msg-Id`` (fresh)
and ``Epm-Signature`` (the device key over ``signing_bytes``); the body carries
``issued_at``. The code comes back sealed to this device's encryption key for
that message id, so only this agent (and only for this request) can read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import orjson
from epm_domain.sealed import SealedError, open_sealed, reply_context
from epm_events.agent import SIGNATURE_HEADER, signing_bytes
from epm_events.ids import new_event_id
from epm_events.subjects import device_rpc_subject

from epm_agent.clock import iso
from epm_agent.device_key import DeviceKey
from epm_agent.elevation import MSG_ID_HEADER, SignedMessage
from epm_agent.encryption_key import EncryptionKey
from epm_agent.errors import AgentError

SELF_GENERATE = "self_generate_code"


def self_generate_request(
    key: DeviceKey,
    *,
    tenant: str,
    device_id: str,
    purpose: str,
    now: datetime,
    sha256: str | None = None,
    minutes: int | None = None,
) -> SignedMessage:
    body: dict[str, Any] = {"purpose": purpose, "issued_at": iso(now)}
    if sha256:
        body["sha256"] = sha256
    if minutes is not None:
        body["minutes"] = minutes
    subject = device_rpc_subject(tenant, device_id, SELF_GENERATE)
    msg_id = new_event_id()
    data = orjson.dumps(body)
    headers = {
        MSG_ID_HEADER: msg_id,
        SIGNATURE_HEADER: key.sign_b64(signing_bytes(subject, msg_id, data)),
    }
    return SignedMessage(subject=subject, msg_id=msg_id, body=data, headers=headers)


def read_generated_code(
    reply: bytes, key: EncryptionKey, *, tenant: str, device_id: str, msg_id: str
) -> dict[str, Any]:
    """``{"code", "purpose", "expires_at", ...}``; a refusal raises ``Refused``."""
    try:
        answer = orjson.loads(reply)
    except orjson.JSONDecodeError:
        raise AgentError("the server answered with something that is not JSON") from None
    if not isinstance(answer, dict):
        raise AgentError("the server answered with something that is not an object")
    if not answer.get("ok"):
        error = answer.get("error") if isinstance(answer.get("error"), dict) else {}
        raise Refused(error or {})
    result = answer.get("result") or {}
    try:
        code = open_sealed(
            key.private_raw, result.get("sealed_code"), reply_context(tenant, device_id, msg_id)
        ).decode()
    except (SealedError, UnicodeDecodeError):
        raise AgentError(
            "the server's answer does not open with this computer's encryption key; "
            "it was not meant for this computer"
        ) from None
    out = {k: v for k, v in result.items() if k != "sealed_code"}
    return {"code": code, **out}


class Refused(AgentError):
    """The server refused; ``status`` and ``provision`` (a policy switch) when it said so."""

    def __init__(self, error: Mapping[str, Any]) -> None:
        self.status = int(error.get("status") or 500)
        self.provision = error.get("provision")
        super().__init__(
            f"the server refused ({self.status}): {error.get('detail') or error.get('title')}"
        )
