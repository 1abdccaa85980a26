"""Decisions show and are found by their request's user and device; filters name bad types.

Against SQLite alone: the trail's ingest (``AuditTrail.apply_batch``), then the
list query (``list_page``) and the export (``export_page``) over what it wrote.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest
from epm_audit.commands import check_type
from epm_audit.queries import AuditFilter, export_page, list_page, verify_trail
from epm_audit.trail import AuditTrail
from epm_audit.verify import verify_lines
from epm_audit.view import Facts, about_request, facts_of, record_of_line
from epm_events.catalog import EVENT_TYPES
from epm_service.errors import Invalid
from epm_service.projection import BOOKKEEPING, StoredMsg, open_db

TECH = {"kind": "technician", "id": "tenant_technician:ann"}


def stored(
    seq: int, tenant: str, aggregate: str, aggregate_id: str, type_: str, **data: Any
) -> StoredMsg:
    event_id = f"evt-{seq}"
    body = {"id": event_id, "source": "/epm/request-svc", "type": f"epm.{type_}.v1", "data": data}
    return StoredMsg(
        seq=seq,
        subject=f"epm.evt.{tenant}.{aggregate}.{aggregate_id}.{type_}",
        data=orjson.dumps(body),
        msg_id=event_id,
        timestamp_ns=1_741_000_000_000_000_000 + seq,
    )


def created(seq: int, tenant: str, request: str, user: str, device: str) -> StoredMsg:
    return stored(
        seq,
        tenant,
        "request",
        request,
        "RequestCreated",
        request_id=request,
        user=user,
        device_id=device,
    )


def decided(seq: int, tenant: str, request: str, type_: str = "Approved") -> StoredMsg:
    data: dict[str, Any] = {"request_id": request}
    if type_ != "RequestExpired":
        data |= {"scope": "once", "by": TECH}
    return stored(seq, tenant, "request", request, type_, **data)


def trail_messages() -> list[StoredMsg]:
    """alice's request approved, bob's denied, carol's expired; in globex a request with the
    same id as alice's, by dave; an offline elevation by alice that names its own device."""
    return [
        created(1, "acme", "r1", "alice", "d-1"),
        created(2, "acme", "r2", "bob", "d-2"),
        created(3, "acme", "r3", "carol", "d-1"),
        created(4, "globex", "r1", "dave", "d-9"),
        decided(5, "acme", "r1"),
        decided(6, "acme", "r2", "Denied"),
        decided(7, "acme", "r3", "RequestExpired"),
        decided(8, "globex", "r1", "Denied"),
        stored(
            9, "acme", "device", "d-3", "ElevationPerformed",
            device_id="d-3", user="alice", device_time="2025-03-01T09:00:00Z",
        ),
    ]  # fmt: skip


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    c = open_db(tmp_path / "audit.sqlite")
    c.executescript(BOOKKEEPING)
    c.executescript(AuditTrail.schema)
    return c


def ingest(
    conn: sqlite3.Connection, msgs: list[StoredMsg], trail: AuditTrail | None = None
) -> None:
    conn.execute("BEGIN IMMEDIATE")
    (trail or AuditTrail()).apply_batch(conn, msgs)
    conn.execute("COMMIT")


def listed(conn: sqlite3.Connection, **filters: Any) -> list[dict[str, Any]]:
    page = list_page(conn, AuditFilter(**filters), 0, 500)
    assert page.next_after is None
    return [orjson.loads(line) for line in page.lines]


def shown(items: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (i["tenant"], i["type"], i.get("request"), i.get("user"), i.get("device")) for i in items
    ]


def test_a_decision_takes_user_and_device_of_its_request_where_it_names_none() -> None:
    approved = facts_of("acme", "epm.evt.acme.request.r1.Approved", {"data": {"request_id": "r1"}})
    request = {"data": {"request_id": "r1", "user": "alice", "device_id": "d-1"}}

    assert (about_request(approved, request).user, about_request(approved, request).device) == (
        "alice",
        "d-1",
    )
    own = Facts(actor=approved.actor, device="d-7", user="zoe", request="r1")
    assert about_request(own, request) == own  # what a record says itself wins
    assert about_request(approved, None) == approved
    assert about_request(approved, {"data": "junk"}) == approved


def test_user_filter_finds_the_decisions_of_that_users_requests(conn: sqlite3.Connection) -> None:
    ingest(conn, trail_messages())

    assert shown(listed(conn, user="alice")) == [
        ("acme", "RequestCreated", "r1", "alice", "d-1"),
        ("acme", "Approved", "r1", "alice", "d-1"),
        ("acme", "ElevationPerformed", None, "alice", "d-3"),
    ]
    assert shown(listed(conn, type="Approved", user="alice")) == [
        ("acme", "Approved", "r1", "alice", "d-1")
    ]
    assert shown(listed(conn, user="carol", tenant="acme")) == [
        ("acme", "RequestCreated", "r3", "carol", "d-1"),
        ("acme", "RequestExpired", "r3", "carol", "d-1"),
    ]


def test_device_filter_finds_decisions_and_expiries_on_that_device(
    conn: sqlite3.Connection,
) -> None:
    ingest(conn, trail_messages())

    assert [(i["type"], i["request"]) for i in listed(conn, device="d-1")] == [
        ("RequestCreated", "r1"),
        ("RequestCreated", "r3"),
        ("Approved", "r1"),
        ("RequestExpired", "r3"),
    ]
    assert [i["type"] for i in listed(conn, device="d-2", user="bob")] == [
        "RequestCreated",
        "Denied",
    ]
    assert listed(conn, device="d-2", user="alice") == []


def test_a_request_id_of_another_tenant_lends_nothing(conn: sqlite3.Connection) -> None:
    ingest(conn, trail_messages())

    assert shown(listed(conn, tenant="globex")) == [
        ("globex", "RequestCreated", "r1", "dave", "d-9"),
        ("globex", "Denied", "r1", "dave", "d-9"),
    ]
    assert {i["tenant"] for i in listed(conn, user="dave")} == {"globex"}
    assert {i["tenant"] for i in listed(conn, user="alice")} == {"acme"}


def test_every_decision_listed_unfiltered_shows_its_requests_user(
    conn: sqlite3.Connection,
) -> None:
    ingest(conn, trail_messages())

    decisions = [i for i in listed(conn) if i["type"] in ("Approved", "Denied", "RequestExpired")]
    assert [(i["tenant"], i["user"], i["device"]) for i in decisions] == [
        ("acme", "alice", "d-1"),
        ("acme", "bob", "d-2"),
        ("acme", "carol", "d-1"),
        ("globex", "dave", "d-9"),
    ]


def test_a_decision_before_its_request_is_in_shows_no_user_then_shows_it(
    conn: sqlite3.Connection,
) -> None:
    trail = AuditTrail()
    ingest(conn, [decided(1, "acme", "r1")], trail)
    [early] = listed(conn)
    assert "user" not in early and "device" not in early

    ingest(conn, [created(2, "acme", "r1", "alice", "d-1")], trail)
    assert shown(listed(conn, user="alice")) == [
        ("acme", "Approved", "r1", "alice", "d-1"),
        ("acme", "RequestCreated", "r1", "alice", "d-1"),
    ]


def test_export_lines_stay_the_records_own_and_verify(conn: sqlite3.Connection) -> None:
    ingest(conn, trail_messages())

    page = export_page(conn, None, 0, 100)
    approved = next(orjson.loads(line) for line in page.lines if b'"Approved"' in line)
    assert "user" not in approved and "device" not in approved  # a function of the record alone
    assert all(record_of_line(line) for line in page.lines)
    assert verify_lines(page.lines, {}).ok
    assert verify_trail(conn, None).ok


def test_same_answers_after_a_rebuild_and_when_a_batch_is_redone(
    conn: sqlite3.Connection, tmp_path: Path
) -> None:
    msgs = trail_messages()
    ingest(conn, msgs[:5])
    # republished after the duplicate window: the batch is redone without the ids recorded
    ingest(conn, [*msgs[:2], *msgs[5:]])
    first = listed(conn, user="alice") + listed(conn, device="d-1")

    rebuilt = open_db(tmp_path / "rebuilt.sqlite")
    rebuilt.executescript(BOOKKEEPING)
    rebuilt.executescript(AuditTrail.schema)
    ingest(rebuilt, msgs)

    assert listed(rebuilt, user="alice") + listed(rebuilt, device="d-1") == first
    rows = "SELECT stem, seq FROM audit_requests ORDER BY seq"
    assert rebuilt.execute(rows).fetchall() == conn.execute(rows).fetchall()


def test_a_trail_written_before_the_request_table_fills_it_once_at_open(
    conn: sqlite3.Connection,
) -> None:
    ingest(conn, trail_messages())
    with conn:  # as a trail written by the previous version leaves it
        conn.execute("DELETE FROM audit_requests")
        conn.execute("DELETE FROM audit_upgrades")
    assert listed(conn, type="Approved", user="alice") == []

    conn.executescript(AuditTrail.schema)  # the next open
    assert shown(listed(conn, type="Approved", user="alice")) == [
        ("acme", "Approved", "r1", "alice", "d-1")
    ]
    assert conn.execute("SELECT count(*) FROM audit_requests").fetchone() == (4,)

    with conn:
        conn.execute("DELETE FROM audit_requests")
    conn.executescript(AuditTrail.schema)  # filled once: a later open does not scan again
    assert conn.execute("SELECT count(*) FROM audit_requests").fetchone() == (0,)


def test_a_request_created_on_another_aggregate_lends_nothing(conn: sqlite3.Connection) -> None:
    odd = stored(1, "acme", "device", "d-1", "RequestCreated", user="mallory", device_id="d-1")
    ingest(conn, [odd, stored(2, "acme", "device", "d-1", "DeviceRevoked", device_id="d-1")])

    assert [i["type"] for i in listed(conn, user="mallory")] == ["RequestCreated"]


def test_an_unknown_type_filter_is_refused_naming_the_types() -> None:
    with pytest.raises(Invalid) as refused:
        check_type("NoSuchType")
    assert "'NoSuchType' is not an event type" in refused.value.detail
    assert all(name in refused.value.detail for name in EVENT_TYPES)

    with pytest.raises(Invalid, match="did you mean Approved"):
        check_type("Aproved")
    check_type("Approved")
    check_type(None)
