"""What the server sends a device on ``epm.device.<tenant>.<device>.<kind>``, as the agent
reads it. Kinds this release does not know (a newer server) decode to None and are read past."""

from __future__ import annotations

from typing import Any

from epm_events.agent import (
    KEY_KIND,
    LOCKOUT_KIND,
    REPLAY_KIND,
    KeyUpdate,
    LockoutLift,
    ReplayAck,
    RequestAnswer,
)
from pydantic import BaseModel, ConfigDict, ValidationError

DECISION_KIND = "decision"
"""A RequestAnswer: Approved, Denied or RequestExpired for one of this device's requests."""

POLICY_KIND = "policy"
"""The tenant's offline policy now; ``seq`` orders updates (highest wins)."""


class PolicyChange(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    policy: dict[str, Any]
    seq: int


DeviceMessage = RequestAnswer | PolicyChange | KeyUpdate | LockoutLift | ReplayAck
"""KeyUpdate: new offline key material (applied if its version is newer, and only if it
opens with this device's encryption key: DeviceChannel checks). LockoutLift: end a
lockout of offline codes now. ReplayAck: request-svc processed an upload of the offline
log (its records are then confirmed)."""

_DECODERS: dict[
    str,
    type[RequestAnswer]
    | type[PolicyChange]
    | type[KeyUpdate]
    | type[LockoutLift]
    | type[ReplayAck],
] = {
    DECISION_KIND: RequestAnswer,
    POLICY_KIND: PolicyChange,
    KEY_KIND: KeyUpdate,
    LOCKOUT_KIND: LockoutLift,
    REPLAY_KIND: ReplayAck,
}

__all__ = [
    "DeviceMessage",
    "KeyUpdate",
    "LockoutLift",
    "PolicyChange",
    "ReplayAck",
    "decode_device_message",
]


def decode_device_message(kind: str, data: bytes) -> DeviceMessage | None:
    decoder = _DECODERS.get(kind)
    if decoder is None:
        return None
    try:
        return decoder.model_validate_json(data)
    except ValidationError:
        return None
