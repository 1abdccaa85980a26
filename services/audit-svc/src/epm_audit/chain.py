"""The audit hash chain: pure functions, no I/O.

One chain per tenant (``_global`` is the MSP chain). Each audit record is

    hash = SHA-256(prev_hash || canonical record)

where ``prev_hash`` is the previous record's hash in the same chain as 64
lowercase hex characters (``GENESIS``, 64 zeros, for the first record),
``||`` is byte concatenation and the canonical record is the RFC 8785 JSON of

    {"chain_seq", "event_id", "event_sha256", "received_ns", "seq",
     "subject", "tenant", "type"}

``event_sha256`` commits to the event exactly as it was stored in the stream
(its raw bytes), so the hot path never parses or re-serialises the event.
``received_ns`` is the JetStream timestamp in nanoseconds, written as a
decimal string (RFC 8785 numbers are IEEE doubles, exact only below 2**53),
so a rebuild from the stream gives the same hashes. Anyone can check a chain
with ``sha256sum``: ``printf '%s%s' "$prev_hash" "$canonical" | sha256sum``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import orjson

GENESIS = "0" * 64
"""``prev_hash`` of the first record of every chain."""

_sha256 = hashlib.sha256


def _plain(text: str) -> bool:
    """Nothing in ``text`` that JSON escapes: no control character, quote or backslash.
    ``str.isprintable`` is False for every control character (and for a few other
    characters, which then take the long way: always right, only slower). Half the time
    of a regular-expression search, per record of the ingest."""
    return text.isprintable() and '"' not in text and "\\" not in text


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One row of the audit trail, as stored and exported."""

    seq: int
    """Stream sequence of the event in EPM_EVENTS."""
    event_id: str
    tenant: str
    type: str
    """The event name, e.g. ``RequestCreated`` (its version is inside ``event``)."""
    subject: str
    """The NATS subject the event was stored under."""
    received_ns: int
    chain_seq: int
    """Position in the tenant's chain, from 1: a missing record leaves a gap."""
    event: bytes
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class ChainHead:
    records: int
    hash: str


EMPTY_HEAD = ChainHead(0, GENESIS)


def canonical_record(
    *,
    seq: int,
    event_id: str,
    tenant: str,
    type: str,
    subject: str,
    received_ns: int,
    chain_seq: int,
    event_sha256: str,
) -> bytes:
    """The RFC 8785 form of a record.

    Keys are written in RFC 8785 order (all ASCII, so code-unit order is byte
    order); the integers are below 2**53, where RFC 8785 writes plain digits.
    Strings that need no escaping (no quote, backslash or control character:
    every real id and subject) are written as they are, in UTF-8, which is
    what RFC 8785 does; anything else goes through orjson, whose string
    escapes are RFC 8785's. ``test_audit_chain`` checks both paths against
    the ``rfc8785`` reference implementation.
    """
    if _plain(f"{event_id}{subject}{tenant}{type}"):
        return (
            f'{{"chain_seq":{chain_seq},"event_id":"{event_id}","event_sha256":"{event_sha256}",'
            f'"received_ns":"{received_ns}","seq":{seq},"subject":"{subject}",'
            f'"tenant":"{tenant}","type":"{type}"}}'
        ).encode()
    return orjson.dumps(
        {
            "chain_seq": chain_seq,
            "event_id": event_id,
            "event_sha256": event_sha256,
            "received_ns": str(received_ns),
            "seq": seq,
            "subject": subject,
            "tenant": tenant,
            "type": type,
        }
    )


def link(prev_hash: str, canonical: bytes) -> str:
    """The hash of a record whose canonical form is ``canonical``."""
    h = hashlib.sha256(prev_hash.encode("ascii"))
    h.update(canonical)
    return h.hexdigest()


def chain_hash(
    prev_hash: str,
    seq: int,
    event_id: str,
    tenant: str,
    type: str,
    subject: str,
    received_ns: int,
    chain_seq: int,
    event: bytes,
) -> str:
    """``link(prev_hash, canonical_record(...))`` in one step: the ingest hot path.

    Positional, and the common case (nothing to escape) hashes one string
    built in one go; ``test_audit_chain`` checks it against the long way.
    """
    event_sha256 = _sha256(event).hexdigest()
    if _plain(f"{event_id}{subject}{tenant}{type}"):
        return _sha256(
            f'{prev_hash}{{"chain_seq":{chain_seq},"event_id":"{event_id}",'
            f'"event_sha256":"{event_sha256}","received_ns":"{received_ns}","seq":{seq},'
            f'"subject":"{subject}","tenant":"{tenant}","type":"{type}"}}'.encode()
        ).hexdigest()
    canonical = canonical_record(
        seq=seq,
        event_id=event_id,
        tenant=tenant,
        type=type,
        subject=subject,
        received_ns=received_ns,
        chain_seq=chain_seq,
        event_sha256=event_sha256,
    )
    return link(prev_hash, canonical)


def seal(
    head: ChainHead,
    *,
    seq: int,
    event_id: str,
    tenant: str,
    type: str,
    subject: str,
    received_ns: int,
    event: bytes,
) -> AuditRecord:
    """The next record of a chain whose head is ``head``."""
    chain_seq = head.records + 1
    return AuditRecord(
        seq=seq,
        event_id=event_id,
        tenant=tenant,
        type=type,
        subject=subject,
        received_ns=received_ns,
        chain_seq=chain_seq,
        event=event,
        prev_hash=head.hash,
        hash=chain_hash(
            head.hash, seq, event_id, tenant, type, subject, received_ns, chain_seq, event
        ),
    )


def record_hash(r: AuditRecord) -> str:
    """Recompute a record's hash from its content and its ``prev_hash``."""
    canonical = canonical_record(
        seq=r.seq,
        event_id=r.event_id,
        tenant=r.tenant,
        type=r.type,
        subject=r.subject,
        received_ns=r.received_ns,
        chain_seq=r.chain_seq,
        event_sha256=hashlib.sha256(r.event).hexdigest(),
    )
    return link(r.prev_hash, canonical)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of checking one chain end to end."""

    ok: bool
    records: int
    head: str
    first_bad: int | None = None
    """``seq`` of the first record that does not verify."""
    problem: str = ""


def verify_chain(records: Iterable[AuditRecord]) -> Verdict:
    """Check one tenant's records, in chain order, from its first record.

    Every record must belong to the same tenant as the first, continue the
    numbering without gaps, point at the previous hash and hash to its own
    ``hash`` with its event bytes: an edited, removed, reordered or inserted
    record breaks the chain at that record.
    """
    head = EMPTY_HEAD
    tenant: str | None = None
    last_seq = 0
    for r in records:
        tenant = r.tenant if tenant is None else tenant
        problem = ""
        if r.tenant != tenant:
            problem = f"record of tenant {r.tenant!r} in the chain of {tenant!r}"
        elif r.chain_seq != head.records + 1:
            problem = f"chain position {r.chain_seq} where {head.records + 1} was expected"
        elif r.seq <= last_seq:
            problem = f"stream sequence {r.seq} does not follow {last_seq}"
        elif r.prev_hash != head.hash:
            problem = "prev_hash is not the hash of the previous record"
        elif record_hash(r) != r.hash:
            problem = "hash does not match the record's content"
        if problem:
            return Verdict(False, head.records, head.hash, first_bad=r.seq, problem=problem)
        head = ChainHead(r.chain_seq, r.hash)
        last_seq = r.seq
    return Verdict(True, head.records, head.hash)
