"""approval-svc's view writes a decision or an expiry by SQL alone (``json_set`` on the stored
request), not by reading the request back, evolving it and writing it whole. What it leaves
must be what the domain's ``evolve`` gives: technicians' decisions read it (409 for a
decided request), and a once-approval's grant is made from it."""

from __future__ import annotations

import sqlite3

import pytest
from epm_approval.view import ApprovalView, find_request, usable_grants
from epm_events.catalog import Event
from epm_service.projection import BOOKKEEPING, StoredMsg

from tests.request_events import APP, CREATED, ENDINGS, ending_id, evolved, stored

pytestmark = pytest.mark.unit


def view_with(*msgs: StoredMsg) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.executescript(BOOKKEEPING)
    conn.executescript(ApprovalView.schema)
    conn.execute("BEGIN IMMEDIATE")
    assert ApprovalView().apply_batch(conn, list(msgs)) == []
    conn.execute("COMMIT")
    return conn


@pytest.mark.parametrize("ending", ENDINGS, ids=ending_id)
def test_a_decision_set_in_sql_leaves_the_request_evolve_gives(ending: Event) -> None:
    conn = view_with(stored(1, CREATED), stored(2, ending))
    assert find_request(conn, "req-1") == (evolved(CREATED, ending), 2)


def test_a_once_approval_makes_its_grant_from_the_stored_request() -> None:
    once = ENDINGS[1]
    conn = view_with(stored(1, CREATED), stored(2, once))
    [grant] = usable_grants(conn, "acme", "ann", APP.sha256, "req-2")
    assert grant.id == "req-1"
    assert usable_grants(conn, "acme", "bob", APP.sha256, "req-2") == []


def test_a_decision_for_a_request_never_seen_writes_nothing() -> None:
    conn = view_with(stored(1, ENDINGS[1]))
    assert find_request(conn, "req-1") is None
    assert conn.execute("SELECT count(*) FROM grants").fetchone() == (0,)


def test_a_second_request_created_under_the_same_id_is_written_the_general_way() -> None:
    again = CREATED.model_copy(update={"reason": "again"})
    conn = view_with(stored(1, CREATED), stored(2, ENDINGS[0]), stored(3, again))
    found = find_request(conn, "req-1")
    assert found is not None and found[0].reason == "again" and found[1] == 3
