"""The state dir: permissions, identity, and decisions applied once, first one wins."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest
from epm_agent.device_key import DeviceKey
from epm_agent.device_messages import PolicyChange
from epm_agent.errors import NotEnrolled
from epm_agent.state import Identity, LocalRequest, StateDir
from epm_events.agent import RequestAnswer

IDENTITY = Identity(
    device_id="d-1",
    tenant="acme",
    hostname="pc-1",
    server_url="http://127.0.0.1:8080",
    nats_url="nats://127.0.0.1:4222",
    inbox_prefix="_INBOX.acme.d-1",
    subjects={"device": "epm.device.acme.d-1.>"},
    policy={"app_codes": True},
    key_material={"version": 1, "ciphertext": "..."},
    nats_password="s3cret",
    enrolled_at="2030-01-01T00:00:00.000Z",
)


def opened(tmp_path: Path) -> StateDir:
    state = StateDir(tmp_path / "agent").open()
    state.save_identity(IDENTITY)
    state.record_request(
        LocalRequest(request_id="req-1", status="open", created_at="t0", updated_at="t0")
    )
    return state


def test_key_file_is_0600_and_loads_back_to_the_same_key(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "agent").open()
    key = DeviceKey.generate()
    key.save(state.key_path)

    assert stat.S_IMODE(state.key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.path.stat().st_mode) == 0o700
    assert DeviceKey.load(state.key_path).public_key_b64() == key.public_key_b64()


def test_identity_survives_reopening_and_hides_the_password_from_repr(tmp_path: Path) -> None:
    opened(tmp_path).close()
    with StateDir(tmp_path / "agent").open(create=False) as state:
        assert state.require_identity() == IDENTITY
    assert "s3cret" not in repr(IDENTITY)


def test_an_unenrolled_state_dir_is_not_created_by_reading_it(tmp_path: Path) -> None:
    with pytest.raises(NotEnrolled, match="epm-agent enroll"):
        StateDir(tmp_path / "nowhere").open(create=False)
    assert not (tmp_path / "nowhere").exists()


def test_a_device_message_is_applied_once_by_sequence_and_by_id(tmp_path: Path) -> None:
    state = opened(tmp_path)
    approved = RequestAnswer(request_id="req-1", status="approved", decided_by="technician:tom")

    assert state.apply_device_message(5, "m-1", "decision", approved)
    assert not state.apply_device_message(5, "m-1", "decision", approved)  # same sequence
    assert not state.apply_device_message(9, "m-1", "decision", approved)  # re-sent by id
    assert state.last_device_seq() == 9
    assert state.device_messages_applied("req-1") == 1


def test_the_first_final_answer_wins(tmp_path: Path) -> None:
    state = opened(tmp_path)
    state.apply_device_message(
        1,
        "m-1",
        "decision",
        RequestAnswer(request_id="req-1", status="denied", decided_by="rule:r"),
    )
    state.apply_device_message(
        2, "m-2", "decision", RequestAnswer(request_id="req-1", status="expired")
    )
    state.apply_answer(RequestAnswer(request_id="req-1", status="approved"))

    request = state.request("req-1")
    assert request is not None and (request.status, request.decided_by) == ("denied", "rule:r")


def test_unknown_kinds_are_read_past_without_changing_requests(tmp_path: Path) -> None:
    state = opened(tmp_path)
    assert not state.apply_device_message(3, "m-3", "lockout-lift", None)
    assert state.last_device_seq() == 3
    assert [(r.request_id, r.status) for r in state.requests()] == [("req-1", "open")]


def test_a_decision_for_a_request_this_state_never_saw_is_kept(tmp_path: Path) -> None:
    state = opened(tmp_path)
    answer = RequestAnswer(request_id="req-2", status="approved", decided_by="technician:tom")
    assert state.apply_device_message(1, "m-1", "decision", answer)
    assert {r.request_id: r.status for r in state.requests()} == {
        "req-1": "open",
        "req-2": "approved",
    }


def test_the_newest_policy_wins_whatever_order_it_is_read_in(tmp_path: Path) -> None:
    state = opened(tmp_path)
    newer = PolicyChange(policy={"app_codes": False, "admin_codes": True}, seq=40)
    older = PolicyChange(policy={"app_codes": True}, seq=30)

    assert state.apply_device_message(1, "m-1", "policy", newer)
    assert not state.apply_device_message(2, "m-2", "policy", older)
    assert state.require_identity().policy == {"app_codes": False, "admin_codes": True}


def test_a_durable_transaction_syncs_its_commit_and_the_rest_do_not(tmp_path: Path) -> None:
    """The offline log, spent codes and failed attempts commit with synchronous=FULL (they
    must survive a power cut); everything else keeps NORMAL (WAL: no sync per commit)."""
    state = opened(tmp_path)
    assert state.db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    with state.transaction(durable=True) as db:
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert state.db.execute("PRAGMA synchronous").fetchone()[0] == 1
    with pytest.raises(RuntimeError), state.transaction(durable=True):
        raise RuntimeError("rolled back")
    assert state.db.execute("PRAGMA synchronous").fetchone()[0] == 1
    with state.transaction() as db:
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 1


def test_a_failed_commit_leaves_no_transaction_open(tmp_path: Path) -> None:
    """A COMMIT that fails (here: a deferred foreign key still violated) is rolled back, and
    a durable transaction's connection goes back to NORMAL."""
    state = opened(tmp_path)
    state.db.execute("PRAGMA foreign_keys=ON")
    state.db.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    state.db.execute(
        "CREATE TABLE child (id INTEGER PRIMARY KEY, parent INTEGER"
        " REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)"
    )
    with pytest.raises(sqlite3.IntegrityError), state.transaction(durable=True) as db:
        db.execute("INSERT INTO child (id, parent) VALUES (1, 99)")
    assert not state.db.in_transaction
    assert state.db.execute("PRAGMA synchronous").fetchone()[0] == 1
    assert state.db.execute("SELECT count(*) FROM child").fetchone()[0] == 0
