"""request-svc's store writes a decision or an expiry by SQL alone (``json_set`` on the stored
request), not by reading the request back, evolving it and writing it whole. What it leaves
must be exactly what the domain's ``evolve`` gives, and what the general way writes."""

from __future__ import annotations

import sqlite3
from typing import Any

import orjson
import pytest
from epm_domain.request import answer_of
from epm_events.catalog import Event
from epm_request.store import RequestStore, request_from_json, request_to_json
from epm_service.projection import BOOKKEEPING, StoredMsg

from tests.request_events import CREATED, ENDINGS, ending_id, evolved, stored

pytestmark = pytest.mark.unit


def fresh() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.executescript(BOOKKEEPING)
    conn.executescript(RequestStore.schema)
    conn.execute(
        "INSERT INTO devices (id, tenant, hostname, public_key, enrollment_id, key_version,"
        " enrolled_at, last_seq) VALUES ('dev-1', 'acme', 'h', 'k', 'e', 1, 'x', 0)"
    )
    return conn


def apply(conn: sqlite3.Connection, msgs: list[StoredMsg]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    assert RequestStore().apply_batch(conn, msgs) == []
    conn.execute("COMMIT")


def row(conn: sqlite3.Connection) -> tuple[Any, ...]:
    return conn.execute(
        "SELECT status, last_seq, state FROM requests WHERE id = 'req-1'"
    ).fetchone()


@pytest.mark.parametrize("ending", ENDINGS, ids=ending_id)
def test_a_decision_set_in_sql_leaves_the_request_evolve_gives(ending: Event) -> None:
    conn = fresh()
    apply(conn, [stored(1, CREATED), stored(2, ending)])
    status, last_seq, state = row(conn)
    expected = evolved(CREATED, ending)
    assert (status, last_seq) == (expected.status, 2)
    assert request_from_json(state) == expected
    assert orjson.loads(state) == orjson.loads(request_to_json(expected))
    [(subject, payload)] = conn.execute("SELECT subject, payload FROM _outbox").fetchall()
    assert subject == "epm.device.acme.dev-1.decision"
    assert orjson.loads(payload) == answer_of(expected).model_dump(mode="json")
    history = conn.execute("SELECT seq, type FROM request_history ORDER BY seq").fetchall()
    assert history == [(1, "RequestCreated"), (2, ending.NAME)]


def test_a_decision_for_a_request_never_seen_writes_nothing() -> None:
    conn = fresh()
    apply(conn, [stored(1, ENDINGS[0])])
    assert row(conn) is None
    assert conn.execute("SELECT count(*) FROM request_history").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM _outbox").fetchone() == (0,)


def test_a_second_request_created_under_the_same_id_is_written_the_general_way() -> None:
    conn = fresh()
    apply(conn, [stored(1, CREATED), stored(2, ENDINGS[0])])
    again = CREATED.model_copy(update={"reason": "again"})
    apply(conn, [stored(3, again)])  # another event id, the same request id
    status, last_seq, state = row(conn)
    assert (status, last_seq) == ("open", 3)
    assert request_from_json(state).reason == "again"


def test_a_device_with_any_open_request_comes_first_in_the_help_desks_list() -> None:
    """A later request decided by a rule used to hide an earlier open one (the flag looked
    at the device's last request only); revoked devices come last."""
    from epm_domain.request import create
    from epm_events.catalog import Actor, Approved
    from epm_request.store import list_devices

    from tests.request_events import APP, NOW

    conn = fresh()
    for device, hostname, revoked in (("dev-2", "a-host", 0), ("dev-3", "b-host", 1)):
        conn.execute(
            "INSERT INTO devices (id, tenant, hostname, public_key, enrollment_id, key_version,"
            " enrolled_at, revoked, last_seq) VALUES (?, 'acme', ?, 'k', 'e', 1, 'x', ?, 0)",
            (device, hostname, revoked),
        )
    later = create(
        request_id="req-2",
        device_id="dev-1",
        user="ann",
        app=APP,
        reason="r",
        now=NOW,
        ttl=CREATED.expires_at - CREATED.created_at,
    )
    by_rule = Approved(
        request_id="req-2", scope="tenant", by=Actor(kind="rule", id="r-1"), rule_id="r-1"
    )
    apply(conn, [stored(1, CREATED), stored(2, later), stored(3, by_rule)])
    listed = list_devices(conn, "acme", offline_open=False)
    assert [(d["device_id"], d["offline_open"]) for d in listed] == [
        ("dev-1", True),  # req-1 still open, though req-2 (its last) was approved
        ("dev-2", False),
        ("dev-3", False),  # revoked: last
    ]
    assert [d["device_id"] for d in list_devices(conn, "acme", offline_open=True)] == ["dev-1"]
