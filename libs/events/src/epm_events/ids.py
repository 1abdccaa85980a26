"""Identifier rules and event-id derivation.

Every id that ends up inside a NATS subject is validated here, before any
subject is built, so a hostile or sloppy id can never widen a subscription
(``*``, ``>``) or add subject tokens (``.``).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import time
import uuid
from datetime import datetime

GLOBAL_TENANT = "_global"
"""Reserved tenant for MSP-wide aggregates (global rules, MSP tokens, audit checkpoints)."""

_TENANT_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_DEVICE_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
_NAME_RE = re.compile(r"[A-Z][A-Za-z0-9]{0,63}")

# Fixed namespace so derived ids are the same on every machine and every run.
EPM_NAMESPACE = uuid.UUID("6f1c2a8e-3b7d-5e4f-9a10-2c3d4e5f6a7b")
_NAMESPACE_BYTES = EPM_NAMESPACE.bytes


class InvalidId(ValueError):
    """An id that may not be used (in a subject or at all). The message says why."""


def validate_tenant(tenant: str, *, allow_global: bool = True) -> str:
    if allow_global and tenant == GLOBAL_TENANT:
        return tenant
    if not isinstance(tenant, str) or not _TENANT_RE.fullmatch(tenant):
        raise InvalidId(
            f"invalid tenant id {tenant!r}: use 1-63 characters of lowercase letters, digits "
            "and '-', starting with a letter or digit (for example 'acme-corp')"
        )
    return tenant


def validate_device(device: str) -> str:
    if not isinstance(device, str) or not _DEVICE_RE.fullmatch(device):
        raise InvalidId(
            f"invalid device id {device!r}: use 1-63 characters of lowercase letters, digits "
            "and '-', starting with a letter or digit"
        )
    return device


def validate_token(value: str, what: str = "id") -> str:
    """A generic subject-safe token: aggregate ids, service and command names."""
    if not isinstance(value, str) or not _TOKEN_RE.fullmatch(value):
        raise InvalidId(
            f"invalid {what} {value!r}: use 1-128 characters of letters, digits, '_' and '-'"
        )
    return value


def validate_event_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidId(f"invalid event name {name!r}: expected a CamelCase name like 'Approved'")
    return name


def new_event_id() -> str:
    """A UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then 74 random bits. Ids made
    one after another sort one after another, so every index keyed by event id (each
    projection's processed ids, the audit trail's) takes new events at its end, not one
    random page each (bench/README.md, "Online request", session 10)."""
    return _time_ordered(time.time_ns() // 1_000_000, os.urandom(10).hex())


def derived_event_id_at(source_id: str, event_name: str, at: datetime) -> str:
    """``derived_event_id``'s determinism in time order, for an event derived from a
    message of time ``at`` (a time every replica and every redelivery reads the same: when
    JetStream stored the message, or a time the message itself carries): a UUIDv8 of that
    millisecond, then 74 bits of the hash of the source id and the event name. Sorted like
    ``new_event_id``'s."""
    h = hashlib.sha1(
        _NAMESPACE_BYTES + f"{source_id}\x1f{event_name}".encode(), usedforsecurity=False
    ).hexdigest()
    return _time_ordered(int(at.timestamp() * 1000), h, version="8")


def _time_ordered(ms: int, bits: str, version: str = "7") -> str:
    """48 bits of milliseconds, the version, 12 bits, the variant, 62 bits (from the hex
    digits ``bits``: 19 of them used)."""
    t = f"{ms & _MS_MASK:012x}"
    return f"{t[:8]}-{t[8:]}-{version}{bits[:3]}-{_VARIANT[bits[3]]}{bits[4:7]}-{bits[7:19]}"


_MS_MASK = (1 << 48) - 1


def derived_event_id(source_id: str, event_name: str) -> str:
    """A deterministic id for an event derived from another message.

    ``source_id`` is the source message id or e.g. ``"<device>:<sequence>"``; a
    service that crashes mid-batch and reprocesses publishes the same id again,
    so JetStream's duplicate window and the projections' processed-id tables
    both recognise it.
    """
    return _uuid5(f"{source_id}\x1f{event_name}")


def _uuid5(name: str) -> str:
    """``str(uuid.uuid5(EPM_NAMESPACE, name))`` without the UUID object: a replay storm
    derives one id per record, and the object costs three times the SHA-1 itself
    (``test_events_ids`` checks this against ``uuid.uuid5``)."""
    h = hashlib.sha1(_NAMESPACE_BYTES + name.encode(), usedforsecurity=False).hexdigest()
    # RFC 4122: version 5 in the 13th hex digit, variant 10xx in the 17th
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def new_id(prefix: str) -> str:
    """A short random id for new aggregates, e.g. ``req-3f9a...``."""
    return f"{prefix}-{uuid.uuid4().hex[:20]}"


def request_id_for(msg_id: str) -> str:
    """The request id of an agent's ElevationRequested message, derived from its message id,
    so a redelivered or re-sent message names the same request (agent and server agree)."""
    return "req-" + _uuid5(f"request\x1f{msg_id}").replace("-", "")[:24]


def approval_used_id(request_id: str) -> str:
    """The message id of an agent's ApprovalUsed report for its request: the same for every
    copy the agent sends, so the stream keeps one."""
    return derived_event_id(request_id, "ApprovalUsed")


def offline_batch_id(
    device: str, first_seq: int, last_seq: int, chain_head: str | None = None
) -> str:
    """The ``Nats-Msg-Id`` of an offline log upload: the same records, the same id.

    ``chain_head`` (the hash of the batch's last record, which chains every record of the
    batch) makes another content of the same range another id: a cloned or restored log's
    batch is not dropped by the stream's duplicate window as a re-send of the original's,
    and request-svc sees the fork. Without it: the id agents used before, kept to
    recognise their uploads' acknowledgements."""
    if chain_head is None:
        return derived_event_id(f"{device}:{first_seq}:{last_seq}", "OfflineLogBatch")
    return derived_event_id(f"{device}:{first_seq}:{last_seq}:{chain_head}", "OfflineLogBatch")


def offline_record_event_id(device: str, seq: int, event_name: str) -> str:
    """The event id of a replayed offline record: one per (device, sequence), forever.

    A UUIDv8 (RFC 9562) laid out so that one device's records sort together, in sequence
    order: 48 bits of the device's hash, the version, the sequence (36 bits, in two runs
    around the variant, which is fixed), then 36 bits of the hash of the device, the
    sequence and the event type. Every index keyed by event id (the audit trail's, the
    projections' processed ids) then takes an upload's records as a run of neighbours,
    not one random page each: the audit trail's writer spent 37-44 µs a record with
    random ids against 15-26 clustered (bench/README.md, "Replay storm", session 7)."""
    d = _device_prefix(device)
    s = f"{seq & _SEQ_MASK:09x}"
    h = hashlib.sha1(
        _NAMESPACE_BYTES + f"{device}:{seq}\x1f{event_name}".encode(), usedforsecurity=False
    ).hexdigest()
    return f"{d[:8]}-{d[8:12]}-8{s[:3]}-8{s[3:6]}-{s[6:]}{h[:9]}"


_SEQ_MASK = (1 << 36) - 1


@functools.lru_cache(maxsize=4096)
def _device_prefix(device: str) -> str:
    return hashlib.sha1(_NAMESPACE_BYTES + device.encode(), usedforsecurity=False).hexdigest()
