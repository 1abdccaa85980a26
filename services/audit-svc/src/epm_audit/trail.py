"""The audit trail: every domain event in EPM_EVENTS, appended to its tenant's hash chain.

This is the ingest hot path, so ``apply_batch`` reads only what the chain needs
and never decodes an event: the tenant and event name come from the subject,
the event id from the ``Nats-Msg-Id`` header (the envelope id, by contract),
the time received from the JetStream timestamp, and the event itself is kept
as the bytes stored in the stream (the chain commits to their SHA-256). Only
a message without the header has its body parsed, for its id.

Exactly once: ``audit_records.event_id`` is UNIQUE, so the table is its own
processed-id table, written in the runner's transaction together with the
checkpoint; an id seen before (the same event published again after the
JetStream duplicate window) is not appended twice. The batch is inserted
optimistically (the index's own lookup finds a repeated id, and only then is
the batch redone with a lookup pass): a third less writer time (bench/README.md).

Chain heads are kept in memory between batches and written to
``audit_heads`` in the same transaction as the records. The cache remembers
the last sequence it sealed; if the table's last sequence differs at the
start of a batch, a transaction was rolled back after the cache moved, and
the heads are reloaded from the database (as they are at open).

Requests: decisions (Approved, Denied, RequestExpired) name their request but
not its user or device; a record shows and is found by those of its request's
RequestCreated (``epm_audit.view.about_request``), joined when it is read.
For that join ``audit_requests`` maps each request (its subject stem,
``epm.evt.<tenant>.request.<request id>.``) to the stream sequence of its
RequestCreated: one row per request, from the subject alone (nothing decoded),
written in the same transaction as the records, so a rebuilt trail has the
same rows. A trail written before the table existed fills it once, at open.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator

import orjson
from epm_service.projection import Projection, Rejected, StoredMsg

from epm_audit.chain import GENESIS, AuditRecord, ChainHead, chain_hash

SCHEMA = """
PRAGMA cache_size = -65536;
CREATE TABLE IF NOT EXISTS audit_records (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    type TEXT NOT NULL,
    subject TEXT NOT NULL,
    received_ns INTEGER NOT NULL,
    chain_seq INTEGER NOT NULL,
    event BLOB NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
-- one tenant's records in order (tenant walls, exports, verify): appends land at the end of
-- each tenant's range, a few hot pages, unlike the event-id index
CREATE INDEX IF NOT EXISTS audit_records_by_tenant ON audit_records (tenant, seq);
CREATE TABLE IF NOT EXISTS audit_heads (
    tenant TEXT PRIMARY KEY, records INTEGER NOT NULL, hash TEXT NOT NULL
) WITHOUT ROWID;
-- each request's RequestCreated, by the stem its records' subjects share (epm_audit.view)
CREATE TABLE IF NOT EXISTS audit_requests (stem TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit_upgrades (name TEXT PRIMARY KEY) WITHOUT ROWID;
-- once, for a trail written before audit_requests existed (the empty ``due`` row source
-- keeps SQLite from scanning the records at every later open)
INSERT OR IGNORE INTO audit_requests (stem, seq)
    SELECT substr(subject, 1, length(subject) - length(type)), seq
    FROM (SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM audit_upgrades WHERE name = 'requests'))
        AS due
    CROSS JOIN audit_records
    WHERE type = 'RequestCreated' AND subject GLOB '*.*.*.request.*.RequestCreated'
    ORDER BY seq;
INSERT OR IGNORE INTO audit_upgrades (name) VALUES ('requests');
CREATE TRIGGER IF NOT EXISTS audit_records_refuse_update BEFORE UPDATE ON audit_records
BEGIN SELECT RAISE(ABORT, 'audit records are append-only: UPDATE refused'); END;
CREATE TRIGGER IF NOT EXISTS audit_records_refuse_delete BEFORE DELETE ON audit_records
BEGIN SELECT RAISE(ABORT, 'audit records are append-only: DELETE refused'); END;
"""

COLUMNS = "seq, event_id, tenant, type, subject, received_ns, chain_seq, event, prev_hash, hash"
INSERT = f"INSERT INTO audit_records ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)"
UPSERT_HEAD = (
    "INSERT INTO audit_heads (tenant, records, hash) VALUES (?,?,?) "
    "ON CONFLICT (tenant) DO UPDATE SET records = excluded.records, hash = excluded.hash"
)
INSERT_REQUEST = "INSERT OR IGNORE INTO audit_requests (stem, seq) VALUES (?,?)"
"""The first RequestCreated of a request wins (there is only one: expected sequence 0)."""
REQUEST_AGGREGATE = "request"
REQUEST_CREATED = "RequestCreated"
NO_RECORDS = (0, GENESIS)
Row = tuple[int, str, str, str, str, int, int, bytes, str, str]
LOOKUP_CHUNK = 500
"""Ids per ``IN (...)`` query, well under SQLite's bound-parameter limit."""


class AuditTrail(Projection):
    name = "audit"
    schema = SCHEMA
    # Each commit rewrites the pages of the event-id index it touched (random UUIDs touch
    # most of them): fewer, larger commits cost measurably less per event (bench/).
    max_batch = 20_000
    # While events flow (a replay storm), gather them for up to 50 ms rather than commit
    # every few: a query (Projector.read) or a waiter still writes what arrived at once.
    coalesce_seconds = 0.05
    gather_up_to = 5_000

    def __init__(self) -> None:
        self._heads: dict[str, tuple[int, str]] = {}
        self._through = -1  # last seq sealed into the heads; -1: load from the database
        self._sealing = 0  # last seq sealed by the batch being written

    def apply_batch(self, conn: sqlite3.Connection, msgs: list[StoredMsg]) -> list[Rejected]:
        self._ensure_heads(conn)
        rejected: list[Rejected] = []
        kept: list[StoredMsg] = []
        ids: list[str] = []
        for m in msgs:
            event_id = m.msg_id or _id_from_body(m.data)
            if event_id is None or m.subject.count(".") != 5:
                rejected.append(
                    Rejected(m, "malformed", "not an EPM domain event (no event id or bad subject)")
                )
                continue
            kept.append(m)
            ids.append(event_id)
        staged: dict[str, tuple[int, str]] = {}
        requests: list[tuple[str, int]] = []
        # Optimistic: the UNIQUE event-id index looks every id up while inserting anyway, so
        # a batch of new ids (all but always) needs no lookup pass of its own. An id seen
        # before (republished after the duplicate window, or twice in the batch) undoes the
        # attempt; the batch is then sealed again without the ids already recorded.
        conn.execute("SAVEPOINT audit_batch")
        try:
            conn.executemany(INSERT, self._sealed(kept, ids, set(), staged, requests))
        except sqlite3.IntegrityError:
            conn.execute("ROLLBACK TO audit_batch")
            staged.clear()
            requests.clear()
            recorded = _already_recorded(conn, ids)
            conn.executemany(INSERT, self._sealed(kept, ids, recorded, staged, requests))
        conn.execute("RELEASE audit_batch")
        if requests:
            conn.executemany(INSERT_REQUEST, requests)
        if staged:
            conn.executemany(UPSERT_HEAD, [(t, n, h) for t, (n, h) in staged.items()])
            # Only now, with every statement done: a failure above leaves the cache as it was.
            self._heads.update(staged)
            self._through = self._sealing
        return rejected

    def _sealed(
        self,
        msgs: list[StoredMsg],
        ids: list[str],
        recorded: set[str],
        staged: dict[str, tuple[int, str]],
        requests: list[tuple[str, int]],
    ) -> Iterator[Row]:
        """The rows to insert, one at a time: each is bound and dropped at once, so a
        batch leaves no thousands of young tuples for the garbage collector to walk.
        Each RequestCreated's (stem, seq) goes to ``requests``."""
        heads = self._heads
        created, on_request = REQUEST_CREATED, REQUEST_AGGREGATE  # locals: read per message
        for m, event_id in zip(msgs, ids, strict=True):
            if event_id in recorded:
                continue
            recorded.add(event_id)  # the same id twice in one batch
            subject = m.subject
            _, _, tenant, aggregate, _, type_ = subject.split(".")
            records, prev = staged.get(tenant) or heads.get(tenant) or NO_RECORDS
            chain_seq = records + 1
            seq, data, ns = m.seq, m.data, m.timestamp_ns
            h = chain_hash(prev, seq, event_id, tenant, type_, subject, ns, chain_seq, data)
            staged[tenant] = (chain_seq, h)
            self._sealing = seq
            if type_ == created and aggregate == on_request:
                requests.append((subject[: -len(type_)], seq))
            yield seq, event_id, tenant, type_, subject, ns, chain_seq, data, prev, h

    def _ensure_heads(self, conn: sqlite3.Connection) -> None:
        (last,) = conn.execute("SELECT coalesce(max(seq), 0) FROM audit_records").fetchone()
        if last != self._through:
            self._heads = load_heads(conn)
            self._through = last


def load_heads(conn: sqlite3.Connection) -> dict[str, tuple[int, str]]:
    return {t: (n, h) for t, n, h in conn.execute("SELECT tenant, records, hash FROM audit_heads")}


def chain_heads(conn: sqlite3.Connection) -> dict[str, ChainHead]:
    """Every chain's head: how many records and the last hash."""
    return {t: ChainHead(n, h) for t, (n, h) in load_heads(conn).items()}


def chain_records(conn: sqlite3.Connection, tenant: str) -> Iterator[AuditRecord]:
    """One tenant's records in chain order (what ``verify_chain`` takes)."""
    cur = conn.execute(
        f"SELECT {COLUMNS} FROM audit_records WHERE tenant = ? ORDER BY seq", (tenant,)
    )
    for seq, eid, t, type_, subject, ns, cseq, event, prev, h in cur:
        yield AuditRecord(seq, eid, t, type_, subject, ns, cseq, bytes(event), prev, h)


def _already_recorded(conn: sqlite3.Connection, ids: list[str]) -> set[str]:
    seen: set[str] = set()
    for chunk in _chunks(ids, LOOKUP_CHUNK):
        marks = ",".join("?" * len(chunk))
        seen.update(
            r[0]
            for r in conn.execute(
                f"SELECT event_id FROM audit_records WHERE event_id IN ({marks})", chunk
            )
        )
    return seen


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _id_from_body(data: bytes) -> str | None:
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    event_id = raw.get("id") if isinstance(raw, dict) else None
    return event_id if isinstance(event_id, str) and event_id else None
