"""What agents publish on ``epm.agent.<tenant>.<device>.<Name>`` (untrusted ingress).

Agent messages are CloudEvents too (source ``/agents/<tenant>/<device>``),
but they are *claims*, not domain events: request-svc authenticates them and
turns them into domain events. Each carries ``Nats-Msg-Id`` and
``Epm-Signature``: Ed25519 by the device key over ``signing_bytes``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from epm_events.catalog import AppInfo, Model, OfflinePolicy

SIGNATURE_HEADER = "Epm-Signature"
REPLY_HEADER = "Epm-Reply-To"
"""Where an online agent waits for the answer: a subject under its inbox prefix.

The message itself goes to EPM_AGENT (so it is never lost), which answers the
NATS reply subject with its PubAck; the decision is sent to this subject."""

_SIGNING_DOMAIN = b"epm-agent-signature-v1"


def signing_bytes(subject: str, msg_id: str, body: bytes) -> bytes:
    """Length-prefixed so no two (subject, id, body) triples share signing bytes."""
    parts = (_SIGNING_DOMAIN, subject.encode(), msg_id.encode(), body)
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


class AgentMessage(Model):
    NAME: ClassVar[str]
    VERSION: ClassVar[int] = 1


class ElevationRequested(AgentMessage):
    """The user tried something that needs elevation and gives a reason."""

    NAME = "ElevationRequested"
    user: str = Field(min_length=1, max_length=256)
    app: AppInfo
    reason: str = Field(default="", max_length=2000)


class OfflineLogEntry(Model):
    """One offline log record as uploaded: ``{"type", "data"}`` is the record the chain
    hashes (epm_domain.offline_log), ``prev_hash`` the hash it chains from."""

    type: str
    data: dict[str, Any]
    prev_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    record_hash: str = Field(pattern=r"^[0-9a-f]{64}$")


MAX_BATCH_RECORDS = 200
MAX_BATCH_BYTES = 64 * 1024
"""An upload batch stays far below the 256 KiB event limit (a record is 0.3-6 KiB)."""


class OfflineLogBatch(AgentMessage):
    """Records ``first_seq``..``last_seq`` of the device's offline log, in order.

    ONE Ed25519 signature (``Epm-Signature`` over ``signing_bytes``) covers the batch and
    with it ``chain_head``, the hash of its last record. ``Nats-Msg-Id`` is
    ``ids.offline_batch_id(device, first_seq, last_seq, chain_head)``, so a re-sent batch
    is deduplicated by the stream, and another batch of the same range is not."""

    NAME = "OfflineLogBatch"
    first_seq: int = Field(ge=1)
    last_seq: int = Field(ge=1)
    chain_head: str = Field(pattern=r"^[0-9a-f]{64}$")
    records: list[OfflineLogEntry] = Field(min_length=1, max_length=MAX_BATCH_RECORDS)


class ApprovalUsed(AgentMessage):
    """The user used the approval of the device's own request as it arrived (the agent was
    waiting for it): a technician's once-approval is spent on that request, so the grant it
    issued answers no later request (request-svc appends GrantConsumed for it).

    ``Nats-Msg-Id`` is ``ids.approval_used_id(request_id)``: a report sent again is
    deduplicated by the stream."""

    NAME = "ApprovalUsed"
    request_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,128}$")


AGENT_MESSAGES: dict[str, type[AgentMessage]] = {
    m.NAME: m for m in (ElevationRequested, OfflineLogBatch, ApprovalUsed)
}


class RequestAnswer(Model):
    """The answer to ElevationRequested, on the reply subject and on EPM_DEVICE."""

    request_id: str
    status: Literal["open", "approved", "denied", "expired"]
    decided_by: str | None = None  # "rule:<id>", "grant:<id>", "technician:<name>", "system"
    rule_id: str | None = None
    scope: str | None = None


# --- server -> device: offline policy and key material (approval-svc) ----------------

POLICY_KIND = "policy"
KEY_KIND = "key"


class PolicyUpdate(Model):
    """On ``epm.device.<tenant>.<device>.policy``: the tenant's offline policy now.

    ``seq`` is the stream sequence of the OfflinePolicyChanged it reports: the
    agent enforces the update with the highest ``seq`` it has seen."""

    tenant: str
    policy: OfflinePolicy
    seq: int


class KeyUpdate(Model):
    """On ``epm.device.<tenant>.<device>.key``: the device's offline key material for a new
    key version, sealed to its X25519 key (epm_domain.sealed.open_device_keys). The agent
    applies it only if ``key_version`` is above its own; codes of older versions then fail."""

    tenant: str
    device_id: str
    key_version: int
    sealed: dict[str, str]
    reason: str = ""


LOCKOUT_KIND = "lockout"


class LockoutLift(Model):
    """On ``epm.device.<tenant>.<device>.lockout``: end this device's offline-code lockout now.

    The agent lifts a lockout in force when it reads this (a lift read while not locked
    changes nothing); the doubling of later cool-offs is kept. ``lifted_by`` names who."""

    tenant: str
    device_id: str
    lifted_by: str
    reason: str = ""


REPLAY_KIND = "replay"


class ReplayRefusal(Model):
    """One record of an upload that request-svc refused, with the kind of its alert."""

    device_seq: int
    kind: str


class ReplayAck(Model):
    """On ``epm.device.<tenant>.<device>.replay``: request-svc processed an OfflineLogBatch.

    ``processed_through`` is the last sequence of the batch: every record up to it is
    in EPM_EVENTS, or was refused with a SecurityAlertRaised (``refused`` counts those).
    The agent marks its records up to there confirmed, if ``batch_id`` is the id of its
    own records there (``ids.offline_batch_id`` binds their chain head): a cloned state dir
    reads the original's acknowledgements too, and must not take them for its own.

    ``refusals``: which records were refused and why (``log_tampered``, ``log_fork``). It
    is left out of the JSON when empty, so agents that predate it read every other
    acknowledgement as before."""

    tenant: str
    device_id: str
    batch_id: str
    first_seq: int
    processed_through: int
    accepted: int
    duplicates: int
    refused: int
    refusals: tuple[ReplayRefusal, ...] = ()
