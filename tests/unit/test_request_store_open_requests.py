"""request-svc's store keeps the state of open requests it wrote (OpenRequests), so a decision
need not parse the request back from its JSON. It may only ever be used when it is what is
committed: a rolled-back write, or a file written by another store, must not leak into it."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from epm_domain.request import create
from epm_events.catalog import Actor, AppInfo, Approved, Event
from epm_events.codec import encode
from epm_events.envelope import new_envelope, subject_of
from epm_request.store import RequestStore
from epm_service.projection import BOOKKEEPING, StoredMsg

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 5, 9, tzinfo=UTC)
APP = AppInfo(file_name="tool.exe", sha256="ab" * 32)


def stored(seq: int, event: Event) -> StoredMsg:
    env = new_envelope(event, tenant="acme", source="/epm/test")
    return StoredMsg(seq, subject_of(env), encode(env), env.id, 1_700_000_000_000_000_000)


def created(seq: int, request_id: str, reason: str = "build") -> StoredMsg:
    event = create(
        request_id=request_id,
        device_id="dev-1",
        user="ann",
        app=APP,
        reason=reason,
        now=NOW,
        ttl=timedelta(days=4),
    )
    return stored(seq, event)


def approved(seq: int, request_id: str) -> StoredMsg:
    rule = Actor(kind="rule", id="rule-1")
    return stored(seq, Approved(request_id=request_id, scope="tenant", by=rule, rule_id="rule-1"))


def fresh(path: Any) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(BOOKKEEPING)
    conn.executescript(RequestStore.schema)
    return conn


def apply(store: RequestStore, conn: sqlite3.Connection, msgs: list[StoredMsg]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    assert store.apply_batch(conn, msgs) == []
    conn.execute("COMMIT")


def request_row(conn: sqlite3.Connection, request_id: str) -> tuple[Any, ...]:
    return conn.execute(
        "SELECT status, last_seq, state FROM requests WHERE id = ?", (request_id,)
    ).fetchone()


def test_a_decision_writes_the_same_row_with_or_without_the_kept_state(tmp_path: Any) -> None:
    kept, parsed = fresh(tmp_path / "kept.sqlite"), fresh(tmp_path / "parsed.sqlite")
    apply(RequestStore(), kept, [created(1, "req-1"), approved(2, "req-1")])
    apply(RequestStore(), parsed, [created(1, "req-1")])
    apply(RequestStore(), parsed, [approved(2, "req-1")])  # another store: parses the JSON
    assert request_row(kept, "req-1") == request_row(parsed, "req-1")
    assert request_row(kept, "req-1")[0] == "approved"


def test_a_rolled_back_write_is_never_taken_for_the_committed_state(tmp_path: Any) -> None:
    store, conn = RequestStore(), fresh(tmp_path / "store.sqlite")
    apply(store, conn, [created(1, "req-1", reason="committed")])
    # A batch that writes a second copy of the request at a later sequence, then rolls back
    # (a storage error, say): the kept state says sequence 2, the file still says 1.
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("DELETE FROM requests WHERE id = 'req-1'")
    store.apply_batch(conn, [created(2, "req-1", reason="rolled back")])
    conn.execute("ROLLBACK")
    apply(store, conn, [approved(3, "req-1")])
    status, last_seq, state = request_row(conn, "req-1")
    assert (status, last_seq) == ("approved", 3)
    assert '"reason":"committed"' in state


def test_decided_requests_are_not_kept() -> None:
    store = RequestStore()
    conn = fresh(":memory:")
    apply(store, conn, [created(1, "req-1"), created(2, "req-2"), approved(3, "req-1")])
    assert store.open_requests.get("req-1", 3) is None
    assert store.open_requests.get("req-2", 2) is not None
