"""A projector SIGKILLed in the middle of a batch and restarted applies every event exactly once."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from epm_events.catalog import TenantCreated
from epm_service.bus import Bus
from epm_service.publisher import EventPublisher
from epm_service.settings import Settings

CHILD = Path(__file__).with_name("projector_child.py")
EVENTS = 20_000


async def until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.02)


def query(db: Path, sql: str) -> list[tuple[object, ...]]:
    if not db.exists():
        return []
    with sqlite3.connect(db, timeout=5) as conn:
        try:
            return conn.execute(sql).fetchall()
        except sqlite3.OperationalError:  # tables not created yet
            return []


def checkpoint(db: Path) -> int:
    rows = query(db, "SELECT seq FROM _checkpoint")
    return int(rows[0][0]) if rows else 0  # type: ignore[call-overload]


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def start_child(
    procs: list[subprocess.Popen[bytes]], settings: Settings, db: Path, *extra: str
) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, str(CHILD), settings.nats_url, str(db), *extra])
    procs.append(proc)
    return proc


async def test_event_is_applied_exactly_once_across_a_projector_killed_mid_batch(
    bus: Bus,
    settings: Settings,
    tmp_path: Path,
    children: list[subprocess.Popen[bytes]],
) -> None:
    pub = EventPublisher(bus.js, "/epm/test")
    envelopes = [
        pub.envelope(TenantCreated(tenant_id=f"t{i}", name=f"T{i}", created_by="test"), f"t{i}")
        for i in range(EVENTS)
    ]
    seqs = await pub.publish(envelopes)
    last = seqs[-1]
    hold_at = seqs[EVENTS * 6 // 10 + 123]
    db = tmp_path / "applied.sqlite"
    marker = tmp_path / "holding"

    first = start_child(
        children, settings, db, "--max-batch", "500", "--hold-at", str(hold_at),
        "--marker", str(marker),
    )  # fmt: skip
    await until(lambda: marker.exists() or first.poll() is not None, "the batch to be held")
    assert first.poll() is None, "the projector exited before the kill"
    at_kill = checkpoint(db)
    rows_at_kill = query(db, "SELECT count(*) FROM applied")[0][0]
    first.send_signal(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL

    # the kill landed mid-run and mid-batch: some batches committed, the held one did not
    assert 0 < at_kill < hold_at < last
    assert rows_at_kill == at_kill  # what is visible is exactly the committed batches
    assert checkpoint(db) == at_kill

    second = start_child(children, settings, db, "--max-batch", "500")
    await until(lambda: checkpoint(db) == last, f"the checkpoint to reach {last}")
    second.send_signal(signal.SIGTERM)
    assert second.wait(10) == 0, "the projector did not stop cleanly on SIGTERM"

    applied = query(db, "SELECT event_id, count(*) FROM applied GROUP BY event_id")
    assert len(applied) == EVENTS
    assert {count for _, count in applied} == {1}
    assert {event_id for event_id, _ in applied} == {env.id for env in envelopes}
    assert query(db, "SELECT count(*) FROM _processed")[0][0] == EVENTS
    assert checkpoint(db) == last
