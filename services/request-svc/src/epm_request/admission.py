"""What makes an agent's message refused or malformed, whoever checks it: the intake on its
event loop, or the worker process that prepares an offline log upload
(epm_request.upload_prep). Pure: no I/O."""

from __future__ import annotations

from epm_events.codec import DecodeError, decode
from epm_events.envelope import Envelope
from epm_events.ids import GLOBAL_TENANT
from epm_events.subjects import AgentSubject


class Refused(Exception):
    """Input refused for a security reason: raise an alert, never a request."""

    def __init__(
        self, kind: str, reason: str, tenant: str = GLOBAL_TENANT, device_id: str | None = None
    ) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.tenant = tenant
        self.device_id = device_id


class Malformed(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def checked_envelope(payload: bytes, msg_id: str, subject: AgentSubject) -> Envelope:
    """The CloudEvent of a message whose subject, device and signature are verified: it must
    parse, carry the message's id, claim the subject's tenant and be the subject's event."""
    try:
        env = decode(payload)
    except DecodeError as exc:
        raise Malformed(exc.reason, exc.detail) from None
    if env.id != msg_id:
        raise Malformed("id_mismatch", "Nats-Msg-Id differs from the CloudEvent id")
    if env.tenant != subject.tenant:
        raise Refused(
            "tenant_mismatch",
            f"envelope claims tenant {env.tenant!r} on a subject of tenant {subject.tenant!r}",
            subject.tenant,
            subject.device,
        )
    if env.event_name != subject.event_name:
        raise Malformed("unknown_type", f"agents may not publish {subject.event_name!r}")
    return env
