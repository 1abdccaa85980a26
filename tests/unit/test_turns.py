"""Turns (epm_service.turns): one CPU-bound job started per event-loop turn, so what the
sockets bring is handled between two jobs of a burst."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from epm_service.turns import Turns

pytestmark = pytest.mark.unit


async def test_an_uncontended_caller_goes_at_once() -> None:
    turns = Turns()
    await asyncio.wait_for(turns.take(), timeout=1)
    assert len(turns) == 0


async def test_a_burst_goes_one_per_loop_turn_in_arrival_order() -> None:
    turns = Turns()
    log: list[str] = []
    loop = asyncio.get_running_loop()

    async def job(name: str) -> None:
        await turns.take()
        log.append(name)

    def io(n: int) -> None:  # what a socket brings: runs every loop turn
        log.append(f"io{n}")
        if n < 4:
            loop.call_soon(io, n + 1)

    jobs = [asyncio.create_task(job(f"job{i}")) for i in range(4)]
    loop.call_soon(io, 0)
    await asyncio.gather(*jobs)
    started = [e for e in log if e.startswith("job")]
    assert started == ["job0", "job1", "job2", "job3"]
    # every two jobs have at least one turn of "I/O" between them
    at = [log.index(j) for j in started]
    for a, b in itertools.pairwise(at):
        assert any(e.startswith("io") for e in log[a:b])


async def test_a_cancelled_caller_gives_its_turn_up() -> None:
    turns = Turns()
    first, gone, after = (asyncio.create_task(turns.take()) for _ in range(3))
    await asyncio.sleep(0)  # they ran: the first went, the other two wait for later turns
    assert first.done() and len(turns) == 2
    gone.cancel()
    await asyncio.wait_for(after, timeout=1)
    assert gone.cancelled()
    for _ in range(3):
        await asyncio.sleep(0)
    assert len(turns) == 0
    await asyncio.wait_for(turns.take(), timeout=1)  # free again once nobody waits
