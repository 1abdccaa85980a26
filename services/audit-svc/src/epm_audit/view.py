"""The audit record as people see it, and as exports carry it: pure functions, no I/O.

The trail stores each event as the bytes that were in the stream; what a
person asks of a record (who did it, on which device, for which user and
request, when the device says it happened) is derived here, at query time,
so the ingest hot path never parses an event.

A record about a request that names neither user nor device itself (Approved,
Denied, RequestExpired: they carry the request id only) shows, and is found by,
the user and device of the request: those of its RequestCreated, the record of
the same tenant and request (``about_request``; the trail joins the two by
subject stem, ``epm_audit.trail``). So "what was alice allowed to run" finds
the decisions, and a rebuilt trail gives the same answers.

An export line (and an item of ``GET /v1/audit``) is one JSON object::

    {"seq", "tenant", "chain_seq", "type", "event_id", "subject",
     "received_at", "received_ns", "actor": {"kind", "id"},
     "device"?, "user"?, "request"?, "device_time"?,
     "prev_hash", "hash", "event": <the CloudEvent exactly as stored>}

in that key order, compact, with the stored event bytes spliced in verbatim
after ``"event":`` (an event that is not a one-line JSON object travels as
``"event_base64"`` instead). Every field of an export line is a function of
the record alone, what the chain commits to, so ``line_of(record)`` is
deterministic: a verifier rebuilds each line from its chained fields and
refuses one that differs by a single byte. An item of ``GET /v1/audit`` adds,
where the record names none, the user and device of its request (a function
of the trail, not of the record: an export, which carries the RequestCreated
itself, keeps the line its record alone gives).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import orjson

from epm_audit.chain import AuditRecord

EVENT_KEY = b',"event":'
EVENT_BASE64 = "event_base64"
AGENT_SOURCE = "/agents/{tenant}/{device}"
DEVICE_AGGREGATES = frozenset({"device", "devicekey"})
REQUEST_AGGREGATES = frozenset({"request"})
BY_FIELDS = (
    "created_by",
    "issued_by",
    "revoked_by",
    "disabled_by",
    "changed_by",
    "added_by",
    "removed_by",
    "rotated_by",
    "lifted_by",
)
"""Fields naming who caused an event, as ``Principal.actor`` (``role:name``) or ``device:<id>``."""


class LineError(ValueError):
    """An export line that is not one the server wrote; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class Actor:
    kind: str  # technician | rule | agent | system (epm_events.catalog.ActorKind)
    id: str


@dataclass(frozen=True, slots=True)
class Facts:
    """What a person asks of a record, derived from the event."""

    actor: Actor
    device: str | None = None
    user: str | None = None
    request: str | None = None
    device_time: str | None = None


def parse_event(raw: bytes) -> dict[str, Any] | None:
    """The stored CloudEvent as a dict, or None if the bytes are not a JSON object."""
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None


def facts_of(tenant: str, subject: str, event: dict[str, Any] | None) -> Facts:
    """Actor, device, user, request and device time of one event.

    The actor: a decision's ``by``; the principal or device in a ``*_by`` field;
    the agent (``/agents/<tenant>/<device>``) for what a device did offline
    (records with a ``device_time``); else the system (the service that wrote it).
    """
    parts = subject.split(".")
    aggregate, aggregate_id = (parts[3], parts[4]) if len(parts) == 6 else ("", "")
    data = event.get("data") if event is not None else None
    data = data if isinstance(data, dict) else {}
    source = event.get("source") if event is not None else None
    device = _text(data.get("device_id")) or (
        aggregate_id if aggregate in DEVICE_AGGREGATES else None
    )
    request = _text(data.get("request_id")) or (
        aggregate_id if aggregate in REQUEST_AGGREGATES else None
    )
    device_time = _text(data.get("device_time"))
    return Facts(
        actor=_actor(tenant, data, source if isinstance(source, str) else "", device_time, device),
        device=device,
        user=_text(data.get("user")),
        request=request,
        device_time=device_time,
    )


def about_request(facts: Facts, created: dict[str, Any] | None) -> Facts:
    """``facts`` of a record about a request, with the user and device of the request's
    RequestCreated (``created``, parsed) wherever the record does not name its own."""
    data = created.get("data") if created is not None else None
    if not isinstance(data, dict) or (facts.user is not None and facts.device is not None):
        return facts
    return replace(
        facts,
        user=facts.user or _text(data.get("user")),
        device=facts.device or _text(data.get("device_id")),
    )


def _actor(
    tenant: str, data: dict[str, Any], source: str, device_time: str | None, device: str | None
) -> Actor:
    by = data.get("by")
    if isinstance(by, dict) and isinstance(by.get("kind"), str) and isinstance(by.get("id"), str):
        return Actor(by["kind"], by["id"])
    if device_time is not None and device is not None:
        return Actor("agent", AGENT_SOURCE.format(tenant=tenant, device=device))
    if source.startswith("/agents/"):
        return Actor("agent", source)
    for field in BY_FIELDS:
        who = data.get(field)
        if isinstance(who, str) and who:
            if who.startswith("device:"):
                return Actor("agent", AGENT_SOURCE.format(tenant=tenant, device=who[7:]))
            if who == "system":
                return Actor("system", who)
            return Actor("technician", who)
    return Actor("system", source.removeprefix("/epm/") or "system")


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def received_at(ns: int) -> str:
    """RFC 3339 in UTC with all nine digits of the JetStream timestamp."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    return f"{datetime.fromtimestamp(seconds, UTC):%Y-%m-%dT%H:%M:%S}.{fraction:09d}Z"


def line_of(
    r: AuditRecord, event: dict[str, Any] | None = None, facts: Facts | None = None
) -> bytes:
    """The record as one compact JSON object (no newline); ``event`` if parsed already;
    ``facts`` to show instead of the record's own (a list item: ``about_request``)."""
    if event is None:
        event = parse_event(r.event)
    if facts is None:
        facts = facts_of(r.tenant, r.subject, event)
    head: dict[str, Any] = {
        "seq": r.seq,
        "tenant": r.tenant,
        "chain_seq": r.chain_seq,
        "type": r.type,
        "event_id": r.event_id,
        "subject": r.subject,
        "received_at": received_at(r.received_ns),
        "received_ns": str(r.received_ns),
        "actor": {"kind": facts.actor.kind, "id": facts.actor.id},
    }
    for key in ("device", "user", "request", "device_time"):
        value = getattr(facts, key)
        if value is not None:
            head[key] = value
    head["prev_hash"] = r.prev_hash
    head["hash"] = r.hash
    if event is not None and b"\n" not in r.event and b"\r" not in r.event:
        return orjson.dumps(head)[:-1] + EVENT_KEY + r.event + b"}"
    head[EVENT_BASE64] = base64.b64encode(r.event).decode()
    return orjson.dumps(head)


def record_of_line(line: bytes) -> AuditRecord:
    """The chained record an export line carries; LineError if it is not a line the server
    wrote (``line_of`` of the result must give the line back, byte for byte)."""
    line = line.rstrip(b"\r\n")
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise LineError(f"not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise LineError("not a JSON object")
    if EVENT_BASE64 in obj:
        try:
            event = base64.b64decode(str(obj[EVENT_BASE64]), validate=True)
        except (binascii.Error, ValueError):
            raise LineError(f"{EVENT_BASE64} is not base64") from None
    else:
        at = line.find(EVENT_KEY)
        if at < 0 or not line.endswith(b"}"):
            raise LineError('no "event" field at the end of the line')
        event = line[at + len(EVENT_KEY) : -1]
    try:
        record = AuditRecord(
            seq=_int(obj["seq"]),
            event_id=str(obj["event_id"]),
            tenant=str(obj["tenant"]),
            type=str(obj["type"]),
            subject=str(obj["subject"]),
            received_ns=int(str(obj["received_ns"])),
            chain_seq=_int(obj["chain_seq"]),
            event=event,
            prev_hash=str(obj["prev_hash"]),
            hash=str(obj["hash"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise LineError(f"missing or malformed field {exc}") from None
    if line_of(record) != line:
        raise LineError("the line differs from the record its chained fields describe")
    return record


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{value!r} is not an integer")
    return value
