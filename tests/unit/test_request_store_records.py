"""request-svc's store writes replayed offline records a run at a time, without the pydantic
models (RequestStore.apply_batch): whatever the mix of events, it must leave the store
exactly as the generic one-event-at-a-time handlers do, and reject the same events."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from epm_events.catalog import (
    AppInfo,
    DeviceEnrolled,
    DeviceRevoked,
    ElevationPerformed,
    Event,
    OfflineCodeRedeemed,
    TenantCreated,
)
from epm_events.codec import encode
from epm_events.envelope import new_envelope, subject_of
from epm_events.ids import offline_record_event_id
from epm_request.store import RequestStore, _plain_record
from epm_service.projection import BOOKKEEPING, Projection, StoredMsg

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 5, 9, tzinfo=UTC)
APP = AppInfo(file_name="tool.exe", sha256="ab" * 32)
TABLES = ("device_log", "device_log_records", "devices", "redeemed_codes")


def stored(seq: int, event: Event, tenant: str = "acme", id: str | None = None) -> StoredMsg:
    env = new_envelope(event, tenant=tenant, source="/epm/test", id=id)
    return StoredMsg(seq, subject_of(env), encode(env), env.id, 1_700_000_000_000_000_000)


def elevation(seq: int, device: str, dseq: int, record_hash: str | None = None) -> StoredMsg:
    event = ElevationPerformed(
        device_id=device,
        device_seq=dseq,
        device_time=T0 + timedelta(minutes=dseq),
        record_hash=record_hash or f"{dseq:064x}",
        user="ann",
        app=APP,
    )
    return stored(seq, event, id=offline_record_event_id(device, dseq, event.NAME))


def orjson_event(m: StoredMsg) -> ElevationPerformed:
    return ElevationPerformed.model_validate(orjson.loads(m.data)["data"])


def with_data(m: StoredMsg, **changes: Any) -> StoredMsg:
    raw = orjson.loads(m.data)
    raw["data"].update(changes)
    for key, value in list(raw["data"].items()):
        if value is None:
            del raw["data"][key]
    return m._replace(data=orjson.dumps(raw))


def fresh(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(BOOKKEEPING)
    conn.executescript(RequestStore.schema)
    return conn


def state(conn: sqlite3.Connection) -> dict[str, list[tuple[Any, ...]]]:
    return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall()) for t in TABLES}


def both_ways(tmp_path: Any, batches: list[list[StoredMsg]]) -> tuple[Any, Any]:
    fast, generic = fresh(str(tmp_path / "fast.sqlite")), fresh(str(tmp_path / "slow.sqlite"))
    store = RequestStore()
    fast_rejected, generic_rejected = [], []
    for batch in batches:
        fast_rejected += [(r.msg.seq, r.reason) for r in store.apply_batch(fast, batch)]
        generic_rejected += [
            (r.msg.seq, r.reason) for r in Projection.apply_batch(store, generic, batch)
        ]
    assert fast_rejected == generic_rejected
    assert state(fast) == state(generic)
    # A plain record's identity is its (device, sequence), kept in the device log: the
    # short way records no event id for it, the generic way does; nothing else differs.
    plain = {r.event_id for batch in batches for m in batch if (r := _plain_record(m))}
    fast_ids = dict(fast.execute("SELECT event_id, seq FROM _processed").fetchall())
    generic_ids = dict(generic.execute("SELECT event_id, seq FROM _processed").fetchall())
    assert not plain & fast_ids.keys()
    assert fast_ids == {i: seq for i, seq in generic_ids.items() if i not in plain}
    return state(fast) | {"_processed": sorted(fast_ids.items(), key=lambda i: i[1])}, fast_rejected


def test_a_mixed_stream_leaves_the_store_as_the_generic_handlers_do(tmp_path: Any) -> None:
    enrolled = [
        stored(1, TenantCreated(tenant_id="acme", name="Acme", created_by="t")),
        stored(
            2,
            DeviceEnrolled(device_id="pc-1", hostname="pc-1", public_key="k", enrollment_id="e1"),
        ),
        stored(
            3,
            DeviceEnrolled(device_id="pc-2", hostname="pc-2", public_key="k", enrollment_id="e2"),
        ),
    ]
    records = [elevation(4 + i, "pc-1" if i % 3 else "pc-2", i // 2 + 1) for i in range(12)]
    redeemed = OfflineCodeRedeemed(
        device_id="pc-1",
        device_seq=40,
        device_time=T0,
        record_hash="cd" * 32,
        kind="access_code",
        code_ref="7",
        grant="admin",
        code_hash="ef" * 32,
    )
    mixed = [
        *records[:5],
        stored(20, DeviceRevoked(device_id="pc-2", revoked_by="t")),  # between two runs
        *records[5:],
        records[2]._replace(seq=21),  # the same event again (after the duplicate window)
        elevation(22, "pc-1", 30, "aa" * 32),
        elevation(23, "pc-1", 30, "bb" * 32)._replace(msg_id="other-id"),  # id mismatch
        with_data(elevation(24, "pc-2", 31), record_hash=None),  # invalid: no record_hash
        with_data(elevation(25, "pc-2", 32), device_seq=0),  # invalid: sequence 0
        stored(26, redeemed, id=offline_record_event_id("pc-1", 40, redeemed.NAME)),
        elevation(27, "pc-1", 35),  # below the highest sequence: the head stays
    ]
    after, rejected = both_ways(tmp_path, [enrolled, mixed[:9], mixed[9:]])
    assert {seq for seq, _ in rejected} == {23, 24, 25}
    log = {row[0]: row for row in after["device_log"]}
    assert log["pc-1"][2:4] == (40, "cd" * 32)
    devices = {row[0]: row for row in after["devices"]}
    assert devices["pc-1"][-1] == 27 and devices["pc-2"][6] == 1  # last_seq; revoked


def test_records_of_many_devices_in_one_run(tmp_path: Any) -> None:
    enrolled = [
        stored(
            i + 1,
            DeviceEnrolled(
                device_id=f"pc-{i}", hostname=f"pc-{i}", public_key="k", enrollment_id=f"e{i}"
            ),
        )
        for i in range(5)
    ]
    records = [elevation(10 + n, f"pc-{n % 5}", n // 5 + 1) for n in range(100)]
    assert all(_plain_record(m) is not None for m in records)  # the short way is taken
    after, rejected = both_ways(tmp_path, [enrolled, records[:37], records[37:]])
    assert rejected == []
    assert sorted(r[4] for r in after["device_log"]) == [20] * 5


def test_repeated_records_in_a_run_are_skipped_as_one_by_one(tmp_path: Any) -> None:
    """A record whose (device, sequence) the store holds, from an earlier batch or earlier
    in the same run, is skipped as the generic way skips it (the first wins)."""
    enrolled = [
        stored(
            1, DeviceEnrolled(device_id="pc-1", hostname="pc-1", public_key="k", enrollment_id="e")
        )
    ]
    first = [elevation(2 + i, "pc-1", i + 1) for i in range(4)]
    again = [
        elevation(10, "pc-1", 5),
        first[1]._replace(seq=11),  # applied in the batch before
        elevation(12, "pc-1", 6),
        elevation(13, "pc-1", 5, "ff" * 32)._replace(seq=13),  # the id of seq 10, in this run
        elevation(14, "pc-1", 7),
        # another event id for a sequence the log holds: changes nothing either way
        stored(
            15, orjson_event(elevation(15, "pc-1", 3)), id="0b0b0b0b-0b0b-4b0b-8b0b-0b0b0b0b0b0b"
        ),
    ]
    after, rejected = both_ways(tmp_path, [enrolled, first, again])
    assert rejected == []
    assert [seq for _, seq in after["_processed"]] == [1]  # DeviceEnrolled only
    assert sorted(r[1] for r in after["device_log_records"]) == [1, 2, 3, 4, 5, 6, 7]
    assert [r[4] for r in after["device_log"]] == [7]  # records counted once each
    assert {r[0]: r[-1] for r in after["devices"]}["pc-1"] == 14  # not moved by seq 15
    assert {r[1]: r[2] for r in after["device_log_records"]}[5] == f"{5:064x}"
