"""The projector's life cycle: caught up, live updates, backpressure, clean stop."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from epm_events.catalog import TenantCreated
from epm_events.codec import encode
from epm_events.envelope import subject_of
from epm_events.subjects import tenant_events_filter
from epm_service import projection
from epm_service.bus import Bus
from epm_service.natsfast import AckReply
from epm_service.projection import Projector, Rejected, StoredMsg
from epm_service.publisher import EventPublisher

from tests.integration.projector_child import AppliedLog


def tenants(n: int, start: int = 0) -> list[TenantCreated]:
    return [
        TenantCreated(tenant_id=f"t{i}", name=f"T{i}", created_by="test")
        for i in range(start, start + n)
    ]


async def publish(bus: Bus, events: list[TenantCreated]) -> list[int]:
    pub = EventPublisher(bus.js, "/epm/test")
    return await pub.publish([pub.envelope(e, e.tenant_id) for e in events])


async def applied_count(p: Projector) -> int:
    return int(await p.read(lambda c: c.execute("SELECT count(*) FROM applied").fetchone()[0]))


async def test_projector_on_an_empty_stream_is_caught_up_at_once(bus: Bus, tmp_path: Path) -> None:
    p = Projector(bus.js, AppliedLog(), tmp_path / "p.sqlite", service="test")
    await p.start()
    try:
        await p.wait_caught_up(5)
        assert p.caught_up
        assert p.position == 0
    finally:
        await p.stop()


async def test_projector_catches_up_with_what_was_there_then_follows_live_events(
    bus: Bus, tmp_path: Path
) -> None:
    seqs = await publish(bus, tenants(1000))
    p = Projector(bus.js, AppliedLog(), tmp_path / "p.sqlite", service="test", max_batch=100)
    await p.start()
    try:
        await p.wait_caught_up(10)
        assert p.position == seqs[-1]
        assert await applied_count(p) == 1000
        more = await publish(bus, tenants(10, start=1000))
        assert await p.wait_for(more[-1], timeout=10)
        assert await applied_count(p) == 1010
    finally:
        await p.stop()


async def test_projector_whose_filter_matches_nothing_is_caught_up(
    bus: Bus, tmp_path: Path
) -> None:
    await publish(bus, tenants(5))
    p = Projector(
        bus.js,
        AppliedLog(),
        tmp_path / "p.sqlite",
        service="test",
        filter_subject=tenant_events_filter("nobody"),
    )
    await p.start()
    try:
        await p.wait_caught_up(5)
        assert await applied_count(p) == 0
    finally:
        await p.stop()


async def test_projector_restarted_resumes_after_its_checkpoint(bus: Bus, tmp_path: Path) -> None:
    db = tmp_path / "p.sqlite"
    first = await publish(bus, tenants(300))
    p = Projector(bus.js, AppliedLog(), db, service="test")
    await p.start()
    await p.wait_caught_up(10)
    await p.stop()
    second = await publish(bus, tenants(200, start=300))
    p = Projector(bus.js, AppliedLog(), db, service="test")
    await p.start()
    try:
        assert p.position == first[-1]
        await p.wait_caught_up(10)
        assert p.position == second[-1]
        rows = await p.read(
            lambda c: c.execute("SELECT min(seq), count(*) FROM applied").fetchone()
        )
        assert rows == (first[0], 500)
    finally:
        await p.stop()


class SlowWriter(AppliedLog):
    def apply_batch(self, conn: sqlite3.Connection, msgs: list[StoredMsg]) -> list[Rejected]:
        time.sleep(0.2)  # the writer thread is behind
        return super().apply_batch(conn, msgs)


async def test_a_writer_far_behind_the_consumer_holds_up_no_other_subscription(
    bus: Bus, tmp_path: Path
) -> None:
    """Messages are handed over in nats-py's read loop, which every subscription of the
    connection shares (replies included): a slow writer must never make it wait."""
    await publish(bus, tenants(300))
    p = Projector(bus.js, SlowWriter(), tmp_path / "p.sqlite", service="test", max_batch=5)
    async with asyncio.timeout(10):
        await p.start()  # its own consumer_info request is answered meanwhile
    try:
        async with asyncio.timeout(5):
            while len(p._buf) < 100:  # noqa: ASYNC110  (received far ahead of the writer)
                await asyncio.sleep(0.01)
        async with asyncio.timeout(2):
            await bus.nc.flush()
            await bus.js.stream_info("EPM_EVENTS")
    finally:
        async with asyncio.timeout(10):
            await p.stop()
    await bus.nc.flush(timeout=5)


async def test_stop_returns_promptly_while_events_are_still_arriving(
    bus: Bus, tmp_path: Path
) -> None:
    await publish(bus, tenants(3000))
    p = Projector(bus.js, AppliedLog(), tmp_path / "p.sqlite", service="test", max_batch=10)
    await p.start()
    await asyncio.wait_for(p.stop(), 10)
    await p.stop()  # a second stop is harmless
    # the file is consistent and a new projector finishes the job
    p = Projector(bus.js, AppliedLog(), tmp_path / "p.sqlite", service="test")
    await p.start()
    try:
        await p.wait_caught_up(10)
        assert await applied_count(p) == 3000
    finally:
        await p.stop()


async def test_projector_locked_out_of_its_file_keeps_the_loop_running_and_applies_later(
    bus: Bus, tmp_path: Path
) -> None:
    """Small batches are written on the event loop: a lock held by someone else must make
    them wait in the writer thread (and retry), never stall the loop."""
    import sqlite3
    import time

    path = tmp_path / "p.sqlite"
    p = Projector(bus.js, AppliedLog(), path, service="test")
    await p.start()
    try:
        await p.wait_caught_up(5)
        locker = sqlite3.connect(path, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        seqs = await publish(bus, tenants(3))
        worst = 0.0
        end = time.monotonic() + 1.0
        while time.monotonic() < end:  # the loop keeps turning while the write waits
            before = time.monotonic()
            await asyncio.sleep(0.01)
            worst = max(worst, time.monotonic() - before)
        assert p.position < seqs[-1]
        locker.execute("ROLLBACK")
        locker.close()
        assert await p.wait_for(seqs[-1], timeout=15)
        assert await applied_count(p) == 3
        assert worst < 0.5, f"the event loop stalled {worst:.2f}s behind a locked file"
    finally:
        await p.stop()


class TenantsOnly(AppliedLog):
    only_handled = True


async def test_projection_of_a_few_kinds_gets_only_those_and_still_answers_wait_for_any_seq(
    bus: Bus, tmp_path: Path
) -> None:
    from epm_events.catalog import TenantKeyCreated

    pub = EventPublisher(bus.js, "/epm/test")
    seqs = await publish(bus, tenants(3))
    others = await pub.publish(
        [
            pub.envelope(
                TenantKeyCreated(tenant_id=f"t{i}", key_version=1, ciphertext="x"), f"t{i}"
            )
            for i in range(3)
        ]
    )
    p = Projector(bus.js, TenantsOnly(), tmp_path / "p.sqlite", service="test")
    await p.start()
    try:
        await p.wait_caught_up(5)
        assert p.position == seqs[-1]  # the other kind never arrived
        # ...yet the projection is as of the stream's last sequence, which is not its kind
        assert await p.wait_for(others[-1], timeout=5)
        more = await publish(bus, tenants(2, start=3))
        assert await p.wait_for(more[-1], timeout=5)
        assert await applied_count(p) == 5
        # a worker following its commits waits for the next one, however quiet the stream
        assert not await p.wait_past(p.position, timeout=0.3)
    finally:
        await p.stop()


async def test_projector_moves_its_wal_into_the_database_file_off_the_loop(
    bus: Bus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite's auto-checkpoint (fsync included) would run inside a commit on the event loop;
    the projector turns it off and checkpoints on a thread of its own instead."""
    monkeypatch.setattr(projection, "CHECKPOINT_SECONDS", 0.0)
    path = tmp_path / "p.sqlite"
    p = Projector(bus.js, AppliedLog(), path, service="test")
    await p.start()
    try:
        await p.wait_caught_up(5)
        assert p._wconn is not None
        assert p._wconn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        seqs = await publish(bus, tenants(50))
        assert await p.wait_for(seqs[-1], timeout=10)
        more = await publish(bus, tenants(1, start=50))  # one more batch: a checkpoint is due
        assert await p.wait_for(more[-1], timeout=10)

        def in_the_file_alone() -> int:
            # immutable=1 reads the database file and ignores the WAL: only checkpointed rows
            ro = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
            try:
                return int(ro.execute("SELECT count(*) FROM applied").fetchone()[0])
            except sqlite3.DatabaseError:  # not even the table yet, or read mid-checkpoint
                return 0
            finally:
                ro.close()

        for i in range(100):
            if in_the_file_alone() >= 50:
                break
            await asyncio.sleep(0.05)
            # a batch committed while the last checkpoint ran waits for the next batch's
            more = await publish(bus, tenants(1, start=51 + i))
            assert await p.wait_for(more[-1], timeout=10)
        assert in_the_file_alone() >= 50
    finally:
        await p.stop()


def file_size(path: str) -> int:
    return os.path.getsize(path) if os.path.exists(path) else 0


async def test_a_grown_wal_is_truncated_though_commits_keep_coming(
    bus: Bus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A passive checkpoint never rewinds a WAL that commits keep appending to; past
    WAL_TRUNCATE_BYTES the checkpointer truncates it (here: at any size)."""
    monkeypatch.setattr(projection, "CHECKPOINT_SECONDS", 0.0)
    monkeypatch.setattr(projection, "WAL_TRUNCATE_BYTES", 0)
    path = tmp_path / "p.sqlite"
    wal = f"{path}-wal"
    p = Projector(bus.js, AppliedLog(), path, service="test")
    await p.start()
    try:
        await p.wait_caught_up(5)
        sizes = []
        for i in range(40):
            [seq] = await publish(bus, tenants(1, start=i))
            assert await p.wait_for(seq, timeout=10)
            await asyncio.sleep(0.05)  # the checkpoint after that batch has run
            sizes.append(file_size(wal))
            if sizes[-1] == 0:
                break
        assert sizes[-1] == 0, sizes
        assert await applied_count(p) == len(sizes)
    finally:
        await p.stop()


class SlowGathering(AppliedLog):
    coalesce_seconds = 60.0  # live events would wait a minute for company


async def test_gathered_live_events_are_written_at_once_for_a_waiter_or_a_query(
    bus: Bus, tmp_path: Path
) -> None:
    p = Projector(bus.js, SlowGathering(), tmp_path / "p.sqlite", service="test")
    await p.start()
    try:
        await p.wait_caught_up(5)
        [seq] = await publish(bus, tenants(1))
        assert await p.wait_for(seq, timeout=5)  # not a minute: someone waits
        assert await applied_count(p) == 1
        [seq] = await publish(bus, tenants(1, start=1))
        for _ in range(500):  # until the consumer has handed it over (gathering now)
            if p._last_seq >= seq:
                break
            await asyncio.sleep(0.01)
        assert p.position < seq
        assert await applied_count(p) == 2  # a query writes what was received first
    finally:
        await p.stop()


class LargeGathering(SlowGathering):
    gather_up_to = 100


async def test_a_gathering_batch_is_written_once_it_holds_gather_up_to_events(
    bus: Bus, tmp_path: Path
) -> None:
    p = Projector(bus.js, LargeGathering(), tmp_path / "p.sqlite", service="test")
    await p.start()  # on an empty stream: the events below are handed over as nats-py would
    pub = EventPublisher(bus.js, "/epm/test")
    events = tenants(100)

    def hand_over(seq: int) -> None:  # live: nothing pending behind it
        env = pub.envelope(events[seq - 1], events[seq - 1].tenant_id)
        p._receive(subject_of(env), AckReply(seq, seq, seq * 1000, 0), encode(env), env.id)

    try:
        await p.wait_caught_up(5)
        for seq in range(1, 100):
            hand_over(seq)
            await asyncio.sleep(0)
        await asyncio.sleep(0.1)
        assert p.position == 0  # 99 live events: still gathering (16 would not be)
        hand_over(100)
        # the hundredth ends the gathering (wait_past waits without writing anything itself)
        assert await p.wait_past(99, timeout=5)
        assert await applied_count(p) == 100
    finally:
        await p.stop()


class WriterThreads(SlowGathering):
    """Which thread wrote each batch, and how many events it held."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[tuple[int, int]] = []

    def apply_batch(self, conn: sqlite3.Connection, msgs: list[StoredMsg]) -> list[Rejected]:
        self.batches.append((threading.get_ident(), len(msgs)))
        return super().apply_batch(conn, msgs)


async def test_a_gathered_batch_a_few_events_past_gather_up_to_is_written_on_the_loop(
    bus: Bus, tmp_path: Path
) -> None:
    """The read that completes a gathering often brings a few more events before the
    batch is written: they go with it, on the event loop, not by the writer thread's hop."""
    log = WriterThreads()
    p = Projector(bus.js, log, tmp_path / "p.sqlite", service="test")
    await p.start()  # on an empty stream: the events below are handed over as nats-py would
    pub = EventPublisher(bus.js, "/epm/test")
    events = tenants(projection.GATHER_UP_TO + 5)
    try:
        await p.wait_caught_up(5)
        for seq, event in enumerate(events, start=1):  # in one loop turn, as from one read
            env = pub.envelope(event, event.tenant_id)
            p._receive(subject_of(env), AckReply(seq, seq, seq * 1000, 0), encode(env), env.id)
        assert await p.wait_past(len(events) - 1, timeout=5)
        assert log.batches == [(threading.get_ident(), len(events))]
        assert await applied_count(p) == len(events)
    finally:
        await p.stop()


async def test_a_committed_read_leaves_a_gathering_batch_gathering(
    bus: Bus, tmp_path: Path
) -> None:
    """A worker that follows the commits (the audit checkpointer) reads what is committed
    and must not end every gathering: then commits stay as small as they come."""
    p = Projector(bus.js, SlowGathering(), tmp_path / "p.sqlite", service="test")
    await p.start()
    try:
        await p.wait_caught_up(5)
        [seq] = await publish(bus, tenants(1))
        for _ in range(500):
            if p._last_seq >= seq:
                break
            await asyncio.sleep(0.01)
        count = await p.read_committed(
            lambda c: int(c.execute("SELECT count(*) FROM applied").fetchone()[0])
        )
        assert count == 0
        assert p.position < seq  # still gathering
        assert await applied_count(p) == 1  # an ordinary query writes it first
    finally:
        await p.stop()


async def test_a_gathering_projection_says_whether_what_it_still_holds_matters(
    bus: Bus, tmp_path: Path
) -> None:
    p = Projector(bus.js, SlowGathering(), tmp_path / "p.sqlite", service="test")
    await p.start()
    try:
        await p.wait_caught_up(5)
        [seq] = await publish(bus, tenants(1))
        assert not p.settled_through(seq + 1, lambda m: False)  # not even arrived yet
        for _ in range(500):
            if p._last_seq >= seq:
                break
            await asyncio.sleep(0.01)
        assert p.position < seq  # still gathering, unwritten
        assert p.settled_through(seq, lambda m: False)

        def matters(m: StoredMsg) -> bool:
            return m.subject.endswith(".TenantCreated")

        assert not p.settled_through(seq, matters)
        assert not p.settled_through(seq, matters)  # asked again: remembered, the same
        assert p.settled_through(seq - 1, matters)  # nothing before it matters
        assert p.position < seq  # asking wrote nothing
        await p.wait_for(seq)
        assert p.settled_through(seq, matters)  # written: settled
    finally:
        await p.stop()


async def test_reactions_run_for_events_received_after_they_are_registered_and_fail_alone(
    bus: Bus, tmp_path: Path
) -> None:
    await publish(bus, tenants(3))
    p = Projector(bus.js, AppliedLog(), tmp_path / "p.sqlite", service="test")
    await p.start()
    seen: list[str] = []
    observed: list[int] = []
    try:
        await p.wait_caught_up(10)

        async def react(m: StoredMsg) -> None:
            seen.append(m.subject)
            if len(seen) == 1:
                raise RuntimeError("a reaction that fails")

        def observe(m: StoredMsg) -> None:
            observed.append(m.seq)
            raise RuntimeError("an observer that fails")

        p.react([TenantCreated.NAME], react)
        p.observe([TenantCreated.NAME], observe)
        more = await publish(bus, tenants(3, start=3))
        assert await p.wait_for(more[-1], timeout=10)
        for _ in range(100):
            if len(seen) == 3:
                break
            await asyncio.sleep(0.01)
        assert sorted(seen) == sorted(subject_of(e) for e in _envelopes(tenants(3, start=3)))
        assert observed == more  # in stream order, as received
        assert await applied_count(p) == 6  # neither failure held the projection up
    finally:
        await p.stop()


def _envelopes(events: list[TenantCreated]) -> list[Any]:
    pub = EventPublisher(None, "/epm/test")  # type: ignore[arg-type]
    return [pub.envelope(e, e.tenant_id) for e in events]
