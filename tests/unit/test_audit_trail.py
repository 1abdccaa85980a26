"""The audit trail's hot path against SQLite alone: rollbacks, reopen, odd messages."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
import pytest
from epm_audit.chain import verify_chain
from epm_audit.trail import AuditTrail, chain_heads, chain_records
from epm_service.projection import BOOKKEEPING, StoredMsg, open_db


def msg(seq: int, tenant: str = "acme", msg_id: str | None = "", body_id: str = "") -> StoredMsg:
    event_id = body_id or f"evt-{seq}"
    return StoredMsg(
        seq=seq,
        subject=f"epm.evt.{tenant}.request.req-{seq}.Approved",
        data=orjson.dumps({"id": event_id, "tenant": tenant, "data": {}}),
        msg_id=event_id if msg_id == "" else msg_id,
        timestamp_ns=1_741_000_000_000_000_000 + seq,
    )


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    c = open_db(tmp_path / "audit.sqlite")
    c.executescript(BOOKKEEPING)
    c.executescript(AuditTrail.schema)
    return c


def commit(trail: AuditTrail, conn: sqlite3.Connection, msgs: list[StoredMsg]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    trail.apply_batch(conn, msgs)
    conn.execute("COMMIT")


def test_heads_in_memory_follow_a_rolled_back_batch(conn: sqlite3.Connection) -> None:
    trail = AuditTrail()
    commit(trail, conn, [msg(1), msg(2)])
    conn.execute("BEGIN IMMEDIATE")
    trail.apply_batch(conn, [msg(3), msg(4)])
    conn.execute("ROLLBACK")  # e.g. the commit failed: the cache moved, the database did not

    commit(trail, conn, [msg(3), msg(4), msg(5)])

    verdict = verify_chain(chain_records(conn, "acme"))
    assert verdict.ok and verdict.records == 5
    assert chain_heads(conn)["acme"].hash == verdict.head


def test_a_failing_batch_leaves_the_heads_as_they_were(conn: sqlite3.Connection) -> None:
    trail = AuditTrail()
    commit(trail, conn, [msg(1)])
    conn.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.IntegrityError):
        trail.apply_batch(conn, [msg(2), msg(1, msg_id="other-id")])  # seq 1 is taken
    conn.execute("ROLLBACK")

    commit(trail, conn, [msg(2)])

    assert verify_chain(chain_records(conn, "acme")).records == 2


def test_a_reopened_trail_continues_the_chains_from_the_database(
    conn: sqlite3.Connection,
) -> None:
    commit(AuditTrail(), conn, [msg(1), msg(2, tenant="globex")])
    commit(AuditTrail(), conn, [msg(3), msg(4, tenant="globex")])

    for tenant in ("acme", "globex"):
        assert verify_chain(chain_records(conn, tenant)).records == 2


def test_same_event_id_twice_in_one_batch_is_recorded_once(conn: sqlite3.Connection) -> None:
    commit(AuditTrail(), conn, [msg(1), msg(2, body_id="evt-1")])

    assert [r.seq for r in chain_records(conn, "acme")] == [1]


def test_event_without_message_id_header_is_identified_by_its_body(
    conn: sqlite3.Connection,
) -> None:
    commit(AuditTrail(), conn, [msg(1, msg_id=None, body_id="from-body")])

    assert [r.event_id for r in chain_records(conn, "acme")] == ["from-body"]


def test_message_that_is_not_an_event_is_rejected_not_chained(conn: sqlite3.Connection) -> None:
    junk = StoredMsg(7, "epm.evt.acme.request.req-7.Approved", b"not json", None, 1)
    odd_subject = StoredMsg(8, "epm.evt.acme", b"{}", "evt-8", 1)
    conn.execute("BEGIN IMMEDIATE")
    rejected = AuditTrail().apply_batch(conn, [junk, odd_subject, msg(9)])
    conn.execute("COMMIT")

    assert [(r.msg.seq, r.reason) for r in rejected] == [(7, "malformed"), (8, "malformed")]
    assert [r.seq for r in chain_records(conn, "acme")] == [9]
