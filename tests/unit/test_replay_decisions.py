"""The pure replay rules (epm_request.offline_replay): which records are accepted, which are
duplicates, and which raise an alert, tested with nothing but Python."""

from __future__ import annotations

from datetime import UTC, datetime

from epm_domain.offline_log import GENESIS, record_hash
from epm_events.agent import OfflineLogBatch, OfflineLogEntry
from epm_request.offline_replay import DeviceLog, decide

DEVICE = "d-1"


def chain(n: int, start: int = 1, prev: str = GENESIS, user: str = "bob") -> list[OfflineLogEntry]:
    out = []
    for seq in range(start, start + n):
        record = {
            "type": "ElevationPerformed",
            "data": {
                "device_id": DEVICE,
                "device_seq": seq,
                "device_time": datetime(2026, 1, 1, tzinfo=UTC).isoformat(),
                "user": user,
                "app": {"file_name": "a.exe", "sha256": "a" * 64},
            },
        }
        h = record_hash(prev, record)
        out.append(
            OfflineLogEntry(type=record["type"], data=record["data"], prev_hash=prev, record_hash=h)
        )
        prev = h
    return out


def batch(entries: list[OfflineLogEntry]) -> OfflineLogBatch:
    return OfflineLogBatch(
        first_seq=entries[0].data["device_seq"],
        last_seq=entries[-1].data["device_seq"],
        chain_head=entries[-1].record_hash,
        records=entries,
    )


def accepted_log(entries: list[OfflineLogEntry]) -> DeviceLog:
    return DeviceLog(
        last_seq=entries[-1].data["device_seq"],
        hashes={e.data["device_seq"]: e.record_hash for e in entries},
    )


def test_a_fresh_log_is_accepted_whole() -> None:
    verdict = decide(DEVICE, batch(chain(5)), DeviceLog())
    assert [r.device_seq for r in verdict.accepted] == [1, 2, 3, 4, 5]
    assert verdict.alerts == [] and verdict.duplicates == 0


def test_records_accepted_before_are_duplicates_not_alerts() -> None:
    entries = chain(6)
    verdict = decide(DEVICE, batch(entries), accepted_log(entries[:4]))
    assert [r.device_seq for r in verdict.accepted] == [5, 6]
    assert verdict.duplicates == 4 and verdict.alerts == []


def test_a_gap_is_an_alert_and_the_later_records_are_accepted() -> None:
    entries = chain(8)
    verdict = decide(DEVICE, batch(entries[5:]), accepted_log(entries[:3]))
    (alert,) = verdict.alerts
    assert alert.kind == "log_gap"
    assert (alert.evidence["missing_from"], alert.evidence["missing_to"]) == (4, 5)
    assert [r.device_seq for r in verdict.accepted] == [6, 7, 8]


def test_another_record_at_an_accepted_sequence_is_a_fork_and_is_refused() -> None:
    ours = chain(3)
    theirs = chain(2, start=3, prev=ours[1].record_hash, user="mallory")
    verdict = decide(DEVICE, batch(theirs), accepted_log(ours))
    assert verdict.refused == 1
    assert [r.device_seq for r in verdict.accepted] == [4]
    kinds = [a.kind for a in verdict.alerts]
    assert kinds == ["log_fork", "log_fork"]  # seq 3 replaced, seq 4 continues the other branch
    assert verdict.alerts[0].evidence["accepted_hash"] == ours[2].record_hash


def test_an_edited_record_is_refused_and_its_neighbours_accepted() -> None:
    entries = chain(3)
    edited = entries[1].model_copy(update={"data": {**entries[1].data, "user": "eve"}})
    verdict = decide(DEVICE, batch([entries[0], edited, entries[2]]), DeviceLog())
    assert [a.kind for a in verdict.alerts] == ["log_tampered"]
    assert [r.device_seq for r in verdict.accepted] == [1, 3]


def test_a_head_that_is_not_the_last_record_refuses_the_batch() -> None:
    entries = chain(3)
    forged = batch(entries).model_copy(update={"chain_head": "f" * 64})
    verdict = decide(DEVICE, forged, DeviceLog())
    assert verdict.accepted == [] and verdict.refused == 3
    assert [a.kind for a in verdict.alerts] == ["log_tampered"]


def test_alert_keys_are_the_same_when_a_batch_is_decided_again() -> None:
    entries = chain(8)
    first = decide(DEVICE, batch(entries[5:]), accepted_log(entries[:3]))
    again = decide(DEVICE, batch(entries[5:]), accepted_log(entries[:3]))
    assert [a.key for a in first.alerts] == [a.key for a in again.alerts]
