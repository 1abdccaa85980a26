"""Reads of the audit trail's SQLite file: pages, exports, verification, keys, checkpoints.

Each function takes a read connection (``Projector.read`` runs it off the event
loop). Pages are bounded twice, by count and by bytes, so an answer stays well
under NATS's 1 MB payload limit whatever the events weigh; a filter that
matches little is bounded by rows scanned, and its page then ends early with a
cursor to go on from.

Filters on the device, user and request live inside the events: SQLite first
keeps the rows whose stored bytes contain the value as JSON writes it
(``instr``, no parsing), then each candidate is parsed and matched exactly.
A record about a request is read together with its request's RequestCreated
(``audit_requests``, by subject stem: two primary-key lookups), whose user and
device it shows and is found by where it names none itself (a decision).
"""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from epm_audit.chain import AuditRecord, ChainHead
from epm_audit.checkpoint import CHECKPOINT, KEY_CREATED
from epm_audit.trail import COLUMNS, chain_heads
from epm_audit.verify import TrailVerdict, TrailVerifier
from epm_audit.view import about_request, facts_of, line_of, parse_event

PAGE_BYTES = 512 * 1024
"""Most bytes of records per answer: half the NATS payload limit, room for JSON escaping."""
SCAN_ROWS = 20_000
"""Most rows a filtered page reads before it answers with what it found."""
FETCH = 500
LIST_COLUMNS = ", ".join(f"r.{c.strip()}" for c in COLUMNS.split(",")) + ", c.event"
WITH_REQUEST = (
    "audit_records r "
    # the request's RequestCreated: its stem is the record's subject without the type
    "LEFT JOIN audit_requests q ON q.stem = substr(r.subject, 1, length(r.subject) - length(r.type)) "
    "LEFT JOIN audit_records c ON c.seq = q.seq AND c.seq != r.seq"
)


@dataclass(frozen=True, slots=True)
class AuditFilter:
    tenant: str | None = None
    """None: every chain (MSP principals only)."""
    type: str | None = None
    device: str | None = None
    user: str | None = None
    request: str | None = None
    since_ns: int | None = None
    until_ns: int | None = None


@dataclass(frozen=True, slots=True)
class Page:
    lines: list[bytes]
    next_after: int | None
    """The stream sequence to continue after, or None at the end."""


def _record(row: tuple[Any, ...]) -> AuditRecord:
    seq, eid, t, type_, subject, ns, cseq, event, prev, h = row
    # bytes as stored; a file edited behind the triggers may hold text: verify must say so
    raw = event.encode() if isinstance(event, str) else bytes(event)
    return AuditRecord(seq, eid, t, type_, subject, ns, cseq, raw, prev, h)


def _paged(
    conn: sqlite3.Connection,
    columns: str,
    source: str,
    seq: str,
    where: list[str],
    params: list[Any],
) -> Iterator[tuple[Any, ...]]:
    """Rows in stream order (``seq``, the first column), fetched a few hundred at a time
    (never the whole table); ``params[0]`` is the sequence to start after."""
    after = params[0]
    while True:
        rows = conn.execute(
            f"SELECT {columns} FROM {source} WHERE {' AND '.join(where)} "
            f"ORDER BY {seq} LIMIT {FETCH}",
            [after, *params[1:]],
        ).fetchall()
        yield from rows
        if len(rows) < FETCH:
            return
        after = rows[-1][0]


def _rows(conn: sqlite3.Connection, where: list[str], params: list[Any]) -> Iterator[AuditRecord]:
    for row in _paged(conn, COLUMNS, "audit_records", "seq", where, params):
        yield _record(row)


def _rows_with_request(
    conn: sqlite3.Connection, where: list[str], params: list[Any]
) -> Iterator[tuple[AuditRecord, bytes | None]]:
    """Like ``_rows``, each record with the stored RequestCreated of its request (None: not
    about a request, the RequestCreated itself, or a request whose creation is not in)."""
    for row in _paged(conn, LIST_COLUMNS, WITH_REQUEST, "r.seq", where, params):
        created = row[-1]
        yield _record(row[:-1]), None if created is None else bytes(created)


def list_page(
    conn: sqlite3.Connection,
    f: AuditFilter,
    after: int,
    limit: int,
    budget: int = PAGE_BYTES,
    scan: int = SCAN_ROWS,
) -> Page:
    where, params = ["r.seq > ?"], list[Any]([after])
    for column, value in (("tenant", f.tenant), ("type", f.type)):
        if value is not None:
            where.append(f"r.{column} = ?")
            params.append(value)
    if f.since_ns is not None:
        where.append("r.received_ns >= ?")
        params.append(f.since_ns)
    if f.until_ns is not None:
        where.append("r.received_ns < ?")
        params.append(f.until_ns)
    wanted = {k: v for k, v in (("device", f.device), ("user", f.user), ("request", f.request))}
    for key, value in wanted.items():
        if value is not None:
            needle = orjson.dumps(value)[1:-1]  # as JSON writes it, without the quotes
            if key == "request":
                where.append("instr(r.event, ?) > 0")
                params.append(needle)
            else:  # the record's own, or its request's
                where.append("(instr(r.event, ?) > 0 OR instr(c.event, ?) > 0)")
                params.extend((needle, needle))
    lines: list[bytes] = []
    size = 0
    last = after
    for scanned, (r, created) in enumerate(_rows_with_request(conn, where, params), 1):
        event = parse_event(r.event)
        facts = facts_of(r.tenant, r.subject, event)
        if created is not None and (facts.user is None or facts.device is None):
            facts = about_request(facts, parse_event(created))
        if all(v is None or getattr(facts, k) == v for k, v in wanted.items()):
            line = line_of(r, event, facts)
            if lines and size + len(line) > budget:
                return Page(lines, last)
            lines.append(line)
            size += len(line)
        last = r.seq
        if len(lines) >= limit or scanned >= scan:
            return Page(lines, last)
    return Page(lines, None)


def export_page(
    conn: sqlite3.Connection, tenant: str | None, after: int, through: int, budget: int = PAGE_BYTES
) -> Page:
    """Records after ``after`` up to ``through`` (the trail's end when the export began, so an
    export is a prefix of every chain and verifies), at most ``budget`` bytes of lines."""
    where, params = ["seq > ?", "seq <= ?"], list[Any]([after, through])
    if tenant is not None:
        where.append("tenant = ?")
        params.append(tenant)
    lines: list[bytes] = []
    size = 0
    last = after
    for r in _rows(conn, where, params):
        line = line_of(r)
        if lines and size + len(line) + 1 > budget:
            return Page(lines, last)
        lines.append(line)
        size += len(line) + 1
        last = r.seq
    return Page(lines, None)


def last_seq(conn: sqlite3.Connection) -> int:
    (last,) = conn.execute("SELECT coalesce(max(seq), 0) FROM audit_records").fetchone()
    return int(last)


def has_tenant(conn: sqlite3.Connection, tenant: str) -> bool:
    return (
        conn.execute("SELECT 1 FROM audit_heads WHERE tenant = ?", (tenant,)).fetchone() is not None
    )


def key_events(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """The data of every AuditKeyCreated (``_global`` chain), oldest first, with ``created_at``."""
    out = []
    for (raw,) in conn.execute(
        "SELECT event FROM audit_records WHERE tenant = '_global' AND type = ? ORDER BY seq",
        (KEY_CREATED,),
    ):
        event = parse_event(bytes(raw))
        data = event.get("data") if event is not None else None
        if isinstance(data, dict) and isinstance(data.get("key_id"), str):
            out.append({**data, "created_at": event.get("time") if event else None})
    return out


def public_keys(conn: sqlite3.Connection) -> dict[str, bytes]:
    return {k["key_id"]: base64.b64decode(k["public_key"]) for k in key_events(conn)}


def checkpointed(conn: sqlite3.Connection) -> dict[str, int]:
    """For each chain, the records its latest checkpoint signed."""
    out: dict[str, int] = {}
    for tenant in chain_heads(conn):
        row = conn.execute(
            "SELECT event FROM audit_records WHERE tenant = ? AND type = ? "
            "ORDER BY seq DESC LIMIT 1",
            (tenant, CHECKPOINT),
        ).fetchone()
        event = parse_event(bytes(row[0])) if row else None
        data = event.get("data") if event is not None else None
        try:
            out[tenant] = int(data["heads"][tenant]["records"])  # type: ignore[index]
        except (KeyError, TypeError, ValueError):
            continue
    return out


def verify_trail(conn: sqlite3.Connection, tenant: str | None) -> TrailVerdict:
    """Recompute the chains (one, or all) and check every checkpoint with the trail's keys;
    then the heads the trail recorded must be the heads recomputed."""
    verifier = TrailVerifier(public_keys(conn))
    where, params = ["seq > ?"], list[Any]([0])
    if tenant is not None:
        where.append("tenant = ?")
        params.append(tenant)
    for r in _rows(conn, where, params):
        if not verifier.add(r):
            break
    if not verifier.broken:
        recorded = chain_heads(conn)
        found = verifier.verdict().heads
        for t in sorted(recorded if tenant is None else [tenant]):
            stored = recorded.get(t, ChainHead(0, ""))
            if t in recorded and found.get(t) != stored:
                seq = _last_seq_of(conn, t)
                verifier.fail(
                    seq,
                    t,
                    f"the chain ends at record {found.get(t, ChainHead(0, '')).records}, but the "
                    f"trail recorded its head as record {stored.records} with another hash",
                    None,
                )
                break
    return verifier.verdict()


def _last_seq_of(conn: sqlite3.Connection, tenant: str) -> int | None:
    row = conn.execute("SELECT max(seq) FROM audit_records WHERE tenant = ?", (tenant,)).fetchone()
    return int(row[0]) if row and row[0] is not None else None
