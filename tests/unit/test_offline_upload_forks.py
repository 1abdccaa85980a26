"""A cloned or restored agent state dir: its uploads get their own message ids, request-svc
says which records it refused, and an agent only takes an acknowledgement of its own
records (every copy of a state dir reads the same device channel)."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

from epm_agent.agent import SyncResult
from epm_agent.device_key import DeviceKey
from epm_agent.offline_state import OfflineState, append_record, apply_replay_ack
from epm_agent.state import StateDir
from epm_agent.upload import batch_message
from epm_events.agent import ReplayAck, ReplayRefusal
from epm_events.ids import offline_batch_id
from epm_request.offline_replay import DeviceLog, decide

from tests.unit.test_replay_decisions import batch, chain

DEVICE = "d-1"
WHEN = datetime(2026, 3, 1, 8, 30, tzinfo=UTC)


def state_with(root: Path, users: list[str]) -> StateDir:
    state = StateDir(root).open()
    with state.transaction() as db:
        for i, user in enumerate(users):
            append_record(
                db,
                "ElevationPerformed",
                DEVICE,
                WHEN + timedelta(seconds=i),
                {"user": user, "app": {"file_name": "a.exe", "sha256": "a" * 64}},
            )
    return state


def ack_for(state: StateDir, **extra: object) -> ReplayAck:
    log = OfflineState(state).log()
    fields: dict[str, object] = {
        "tenant": "acme",
        "device_id": DEVICE,
        "batch_id": offline_batch_id(DEVICE, log[0].seq, log[-1].seq, log[-1].hash),
        "first_seq": log[0].seq,
        "processed_through": log[-1].seq,
        "accepted": len(log),
        "duplicates": 0,
        "refused": 0,
    }
    fields.update(extra)
    return ReplayAck.model_validate(fields)


def apply(state: StateDir, ack: ReplayAck) -> bool:
    with state.transaction() as db:
        return apply_replay_ack(db, ack)


# --- message ids ----------------------------------------------------------------------


def test_the_same_records_uploaded_again_have_the_same_message_id(tmp_path: Path) -> None:
    state = state_with(tmp_path / "pc", ["bob", "bob"])
    key = DeviceKey.generate()
    records = OfflineState(state).log()
    first = batch_message(key, tenant="acme", device_id=DEVICE, records=records)
    again = batch_message(key, tenant="acme", device_id=DEVICE, records=records)
    assert first.msg_id == again.msg_id


def test_other_records_under_the_same_sequences_have_another_message_id(
    tmp_path: Path,
) -> None:
    original = OfflineState(state_with(tmp_path / "pc", ["bob", "bob"])).log()
    clone = OfflineState(state_with(tmp_path / "clone", ["bob", "mallory"])).log()
    key = DeviceKey.generate()
    one = batch_message(key, tenant="acme", device_id=DEVICE, records=original)
    other = batch_message(key, tenant="acme", device_id=DEVICE, records=clone)
    assert (original[0].seq, original[-1].seq) == (clone[0].seq, clone[-1].seq)
    assert one.msg_id != other.msg_id
    assert one.msg_id == offline_batch_id(DEVICE, 1, 2, original[-1].hash)


# --- acknowledgements ---------------------------------------------------------------------


def test_an_acknowledgement_of_its_own_records_confirms_them(tmp_path: Path) -> None:
    state = state_with(tmp_path / "pc", ["bob", "bob"])
    assert apply(state, ack_for(state))
    assert OfflineState(state).upload_counts() == (2, 2, 2)
    assert OfflineState(state).refused() == {}


def test_a_clone_does_not_take_the_originals_acknowledgement_for_its_own(
    tmp_path: Path,
) -> None:
    original = state_with(tmp_path / "pc", ["bob"])
    original.close()
    shutil.copytree(tmp_path / "pc", tmp_path / "clone")
    original = StateDir(tmp_path / "pc").open()
    clone = StateDir(tmp_path / "clone").open()
    for state, user in ((original, "bob"), (clone, "mallory")):
        with state.transaction() as db:
            append_record(
                db,
                "ElevationPerformed",
                DEVICE,
                WHEN,
                {"user": user, "app": {"file_name": "a.exe", "sha256": "a" * 64}},
            )
    assert not apply(clone, ack_for(original))
    assert OfflineState(clone).upload_counts() == (2, 0, 0)
    assert apply(original, ack_for(original))


def test_an_acknowledgement_of_an_upload_from_before_chain_heads_confirms_by_range(
    tmp_path: Path,
) -> None:
    state = state_with(tmp_path / "pc", ["bob", "bob"])
    assert apply(state, ack_for(state, batch_id=offline_batch_id(DEVICE, 1, 2)))
    assert OfflineState(state).upload_counts() == (2, 2, 2)


def test_refused_records_are_kept_apart_from_the_confirmed_ones(tmp_path: Path) -> None:
    state = state_with(tmp_path / "pc", ["bob", "bob", "bob"])
    refusals = (
        ReplayRefusal(device_seq=2, kind="log_tampered"),
        ReplayRefusal(device_seq=3, kind="log_fork"),
    )
    assert apply(state, ack_for(state, accepted=1, refused=2, refusals=refusals))
    tables = OfflineState(state)
    assert tables.refused() == {"log_tampered": [2], "log_fork": [3]}
    records, _, processed = tables.upload_counts()
    assert (records, processed) == (3, 3)  # settled: not sent again, not pending


def test_sync_json_names_refused_records_only_when_there_are_some() -> None:
    assert SyncResult(sent=2, confirmed=2, pending=0).as_json() == {
        "sent": 2,
        "confirmed": 2,
        "pending": 0,
    }
    refused = SyncResult(sent=2, confirmed=14, pending=0, refused={"log_tampered": [15, 16]})
    assert refused.as_json() == {
        "sent": 2,
        "confirmed": 14,
        "pending": 0,
        "refused": 2,
        "refusals": {"log_tampered": [15, 16]},
    }


def test_an_acknowledgement_without_refusals_is_the_json_agents_before_them_read() -> None:
    ack = ReplayAck(
        tenant="acme",
        device_id=DEVICE,
        batch_id="b",
        first_seq=1,
        processed_through=2,
        accepted=2,
        duplicates=0,
        refused=0,
    )
    assert "refusals" not in ack.model_dump(mode="json", exclude_defaults=True)


# --- request-svc's verdict ---------------------------------------------------------------


def test_the_verdict_names_each_record_refused_as_a_fork() -> None:
    accepted = chain(2)
    other = chain(2, user="mallory")
    known = DeviceLog(2, {1: accepted[0].record_hash, 2: accepted[1].record_hash})
    verdict = decide(DEVICE, batch(other), known)
    assert verdict.refused == 2 and not verdict.accepted
    assert verdict.refusals == [(1, "log_fork"), (2, "log_fork")]


def test_the_verdict_names_an_edited_record_as_tampered() -> None:
    entries = chain(3)
    edited = entries[1].model_copy(update={"data": {**entries[1].data, "user": "eve"}})
    verdict = decide(DEVICE, batch([entries[0], edited, entries[2]]), DeviceLog())
    assert verdict.refusals == [(2, "log_tampered")]
    assert [r.device_seq for r in verdict.accepted] == [1, 3]
