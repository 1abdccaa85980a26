"""An elevation request as the agent sends it: what, who, why, signed by the device key.

Pure: building the message does no I/O beyond hashing the executable.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePath
from typing import Any

import orjson
from epm_events.agent import (
    REPLY_HEADER,
    SIGNATURE_HEADER,
    AgentMessage,
    ApprovalUsed,
    ElevationRequested,
    signing_bytes,
)
from epm_events.catalog import AppInfo
from epm_events.codec import encode
from epm_events.envelope import Envelope, agent_source
from epm_events.ids import approval_used_id, new_event_id, request_id_for
from epm_events.subjects import agent_subject

from epm_agent.device_key import DeviceKey
from epm_agent.errors import AgentError

MSG_ID_HEADER = "Nats-Msg-Id"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1024 * 1024


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def describe_app(
    exe: str,
    *,
    sha256: str | None = None,
    publisher: str = "",
    app_name: str = "",
    command_line: str = "",
) -> AppInfo:
    """What is being elevated. The SHA-256 is computed from the file when it exists;
    ``sha256`` names an executable that is not on this machine (or must not be read)."""
    path = Path(exe).expanduser()
    if path.is_file():
        try:
            digest = sha256_of_file(path)
        except OSError as exc:
            raise AgentError(
                f"cannot read {exe} to compute its SHA-256 ({exc.strerror or exc}); "
                "give it with --sha256"
            ) from None
        if sha256 is not None and sha256.lower() != digest:
            raise AgentError(
                f"--sha256 {sha256} does not match {exe} (its SHA-256 is {digest}); "
                "leave --sha256 out to use the file's"
            )
        full_path = str(path.resolve())
    elif sha256 is not None:
        digest = sha256.lower()
        if not _SHA256.fullmatch(digest):
            raise AgentError(f"--sha256 {sha256!r} is not a SHA-256: give 64 hexadecimal digits")
        full_path = exe
    else:
        raise AgentError(
            f"{exe} is not a file on this machine, so its SHA-256 cannot be computed; "
            "check --exe or give --sha256"
        )
    return AppInfo(
        file_name=PurePath(full_path.replace("\\", "/")).name or full_path,
        sha256=digest,
        publisher=publisher,
        app_name=app_name,
        path=full_path,
        command_line=command_line,
    )


@dataclass(frozen=True, slots=True)
class SignedMessage:
    """A message ready for ``js.publish``: subject, body and headers, signature included."""

    subject: str
    msg_id: str
    body: bytes
    headers: dict[str, str]

    @property
    def request_id(self) -> str:
        return request_id_for(self.msg_id)


def elevation_message(
    key: DeviceKey,
    *,
    tenant: str,
    device_id: str,
    user: str,
    app: AppInfo,
    reason: str,
    reply_to: str | None = None,
    msg_id: str | None = None,
    time: datetime | None = None,
) -> SignedMessage:
    request = ElevationRequested(user=user, app=app, reason=reason)
    extra = {REPLY_HEADER: reply_to} if reply_to is not None else {}
    return signed_message(
        key,
        tenant=tenant,
        device_id=device_id,
        message=request,
        msg_id=msg_id,
        time=time,
        headers=extra,
    )


def approval_used_message(
    key: DeviceKey, *, tenant: str, device_id: str, request_id: str
) -> SignedMessage:
    """The report that the user used the approval of ``request_id``; every copy has the same
    message id, so the stream keeps one however often it is sent."""
    return signed_message(
        key,
        tenant=tenant,
        device_id=device_id,
        message=ApprovalUsed(request_id=request_id),
        msg_id=approval_used_id(request_id),
    )


def signed_message(
    key: DeviceKey,
    *,
    tenant: str,
    device_id: str,
    message: AgentMessage,
    msg_id: str | None = None,
    time: datetime | None = None,
    headers: dict[str, str] | None = None,
) -> SignedMessage:
    """Any agent message as a CloudEvent on ``epm.agent.<tenant>.<device>.<Name>``, signed
    by the device key over ``signing_bytes(subject, msg_id, body)``."""
    msg_id = msg_id or new_event_id()
    subject = agent_subject(tenant, device_id, message.NAME)
    envelope = Envelope(
        id=msg_id,
        source=agent_source(tenant, device_id),
        type=f"epm.{message.NAME}.v{message.VERSION}",
        subject=device_id,
        time=time or datetime.now(UTC),
        tenant=tenant,
        data=message.model_dump(mode="json"),
    )
    body = encode(envelope)
    signed = {
        **(headers or {}),
        MSG_ID_HEADER: msg_id,
        SIGNATURE_HEADER: key.sign_b64(signing_bytes(subject, msg_id, body)),
    }
    return SignedMessage(subject=subject, msg_id=msg_id, body=body, headers=signed)


def signed_data(
    key: DeviceKey,
    *,
    tenant: str,
    device_id: str,
    name: str,
    version: int,
    data: dict[str, Any],
    msg_id: str,
    time: datetime | None = None,
) -> SignedMessage:
    """As ``signed_message``, for a body already in its JSON form (no model round trip)."""
    subject = agent_subject(tenant, device_id, name)
    body = orjson.dumps(
        {
            "specversion": "1.0",
            "id": msg_id,
            "source": agent_source(tenant, device_id),
            "type": f"epm.{name}.v{version}",
            "subject": device_id,
            "time": (time or datetime.now(UTC)).isoformat(),
            "datacontenttype": "application/json",
            "tenant": tenant,
            "data": data,
        }
    )
    headers = {
        MSG_ID_HEADER: msg_id,
        SIGNATURE_HEADER: key.sign_b64(signing_bytes(subject, msg_id, body)),
    }
    return SignedMessage(subject=subject, msg_id=msg_id, body=body, headers=headers)
