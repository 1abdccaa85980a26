"""Projections are idempotent by event id beyond JetStream's duplicate window, and rebuildable."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import time
from pathlib import Path

from epm_events.catalog import RequestCreated, TenantCreated
from epm_events.codec import encode
from epm_events.envelope import Envelope, subject_of
from epm_events.streams import EVENTS
from epm_service.bus import Bus
from epm_service.projection import Projector
from epm_service.publisher import MSG_ID, EventPublisher
from epm_service.streams import apply_streams
from epm_service.tenants import TenantDirectory

from tests.integration.projector_child import AppliedLog


async def publish_once_more(bus: Bus, env: Envelope, timeout: float = 10.0) -> int:
    """Publish ``env`` again, retrying while JetStream still calls it a duplicate."""
    deadline = time.monotonic() + timeout
    while True:
        ack = await bus.js.publish(subject_of(env), encode(env), headers={MSG_ID: env.id})
        if not ack.duplicate:
            return ack.seq
        if time.monotonic() > deadline:
            raise AssertionError(f"still a duplicate after {timeout:g}s")
        await asyncio.sleep(0.1)


async def test_same_event_id_published_after_the_duplicate_window_is_applied_once(
    bus: Bus, tmp_path: Path
) -> None:
    short_window = dataclasses.replace(EVENTS, duplicate_window_seconds=1)
    assert await apply_streams(bus.js, specs=(short_window,)) == [("EPM_EVENTS", "updated")]
    pub = EventPublisher(bus.js, "/epm/test")
    env = pub.envelope(TenantCreated(tenant_id="acme", name="Acme", created_by="test"), "acme")
    db = tmp_path / "p.sqlite"

    [first] = await pub.publish([env])
    again = await bus.js.publish(subject_of(env), encode(env), headers={MSG_ID: env.id})
    assert again.duplicate and again.seq == first  # inside the window JetStream dedups

    p = Projector(bus.js, AppliedLog(), db, service="test")
    await p.start()
    await p.wait_caught_up(5)
    await p.stop()

    second = await publish_once_more(bus, env)  # after the window: stored a second time
    assert second > first
    for seq in (first, second):
        stored = await bus.js.get_msg(EVENTS.name, seq)
        assert stored.headers is not None and stored.headers[MSG_ID] == env.id

    p = Projector(bus.js, AppliedLog(), db, service="test")
    await p.start()
    try:
        assert await p.wait_for(second, timeout=5)
        rows = await p.read(lambda c: c.execute("SELECT event_id, seq FROM applied").fetchall())
    finally:
        await p.stop()
    assert rows == [(env.id, first)]


async def test_duplicates_within_one_batch_are_applied_once(bus: Bus, tmp_path: Path) -> None:
    short_window = dataclasses.replace(EVENTS, duplicate_window_seconds=1)
    await apply_streams(bus.js, specs=(short_window,))
    pub = EventPublisher(bus.js, "/epm/test")
    env = pub.envelope(TenantCreated(tenant_id="acme", name="Acme", created_by="test"), "acme")
    [first] = await pub.publish([env])
    second = await publish_once_more(bus, env)
    p = Projector(bus.js, AppliedLog(), tmp_path / "p.sqlite", service="test")
    await p.start()
    try:
        await p.wait_caught_up(5)
        assert p.position == second
        rows = await p.read(lambda c: c.execute("SELECT event_id, seq FROM applied").fetchall())
    finally:
        await p.stop()
    assert rows == [(env.id, first)]


def dump(db: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every table, every row, in a stable order."""
    with sqlite3.connect(db) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
            )
        ]
        return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}


def delete_projection(db: Path) -> None:
    for f in db.parent.glob(db.name + "*"):  # the file and its -wal/-shm
        f.unlink()


async def test_deleted_projection_is_rebuilt_to_identical_content(bus: Bus, tmp_path: Path) -> None:
    pub = EventPublisher(bus.js, "/epm/test")
    for i in range(200):
        await pub.publish(
            [pub.envelope(TenantCreated(tenant_id=f"t{i}", name=f"T{i}", created_by="x"), f"t{i}")]
        )
    # something the projection does not handle, and something it rejects, are part of the state
    request = RequestCreated.model_validate(
        {
            "request_id": "req-1",
            "device_id": "pc-1",
            "user": "alice",
            "app": {"file_name": "a.exe", "sha256": "a" * 64},
            "created_at": "2025-01-01T00:00:00Z",
            "expires_at": "2025-01-05T00:00:00Z",
        }
    )
    await pub.append("t1", [request], 0)
    await bus.js.publish("epm.evt.t1.tenant.t999.TenantCreated", b"not json")
    db = tmp_path / "tenants.sqlite"

    p = Projector(bus.js, TenantDirectory(), db, service="test", max_batch=37)
    await p.start()
    await p.wait_caught_up(5)
    await p.stop()
    before = dump(db)
    assert len(before["tenants"]) == 200
    assert len(before["_rejected"]) == 1

    delete_projection(db)
    p = Projector(bus.js, TenantDirectory(), db, service="test", max_batch=5000)
    await p.start()
    await p.wait_caught_up(5)
    await p.stop()
    assert dump(db) == before
