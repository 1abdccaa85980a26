"""epm_service.processes.WorkerProcesses on real spawned processes: jobs fed from the event
loop, answers in order, a failure raised where the job was asked, a worker that dies
replaced, nothing left behind."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator

import pytest
from epm_service.processes import WorkerDied, WorkerProcesses

pytestmark = pytest.mark.integration


def square(n: int) -> int:
    return n * n


def whose(n: int) -> tuple[int, int]:
    return os.getpid(), n


def refuse(reason: str) -> None:
    raise ValueError(reason)


def hang() -> None:
    time.sleep(60)


@pytest.fixture
async def workers() -> AsyncIterator[WorkerProcesses]:
    w = WorkerProcesses(2, "test-worker")
    await w.start()
    yield w
    await w.stop()


async def test_jobs_run_in_the_workers_and_answer_each_caller(workers: WorkerProcesses) -> None:
    answers = await asyncio.gather(*(workers.run(whose, n) for n in range(40)))
    assert [n for _, n in answers] == list(range(40))
    assert {pid for pid, _ in answers} <= set(workers.pids)
    assert os.getpid() not in {pid for pid, _ in answers}
    assert await workers.run(square, 12) == 144


async def test_an_exception_in_a_job_is_raised_to_its_caller(workers: WorkerProcesses) -> None:
    with pytest.raises(ValueError, match="not this one"):
        await workers.run(refuse, "not this one")
    assert await workers.run(square, 3) == 9  # the worker goes on


async def test_ctrl_c_leaves_the_workers_to_their_service(workers: WorkerProcesses) -> None:
    """Ctrl-C reaches the whole process group; the service stops its workers itself, so a
    worker neither dies of it nor prints a KeyboardInterrupt trace."""
    await asyncio.gather(*(workers.run(square, n) for n in range(10)))  # both up and serving
    pids = workers.pids
    for pid in pids:
        os.kill(pid, signal.SIGINT)
    answers = await asyncio.gather(*(workers.run(whose, n) for n in range(10)))
    assert {pid for pid, _ in answers} <= set(pids) and workers.pids == pids


async def test_a_worker_killed_mid_job_fails_it_and_is_replaced() -> None:
    workers = WorkerProcesses(1, "test-worker")
    await workers.start()
    try:
        (before,) = workers.pids
        hanging = asyncio.ensure_future(workers.run(hang))
        await asyncio.sleep(0.5)
        os.kill(before, signal.SIGKILL)
        with pytest.raises(WorkerDied):
            await asyncio.wait_for(hanging, 10)
        assert await asyncio.wait_for(workers.run(square, 5), 30) == 25
        assert workers.pids and workers.pids != [before]
    finally:
        await workers.stop()


async def test_a_job_sent_while_a_worker_is_replaced_goes_to_a_running_one(
    workers: WorkerProcesses,
) -> None:
    first, second = workers.pids
    hanging = asyncio.ensure_future(workers.run(hang))  # both idle: the first takes it
    await asyncio.sleep(0.5)
    os.kill(first, signal.SIGKILL)
    with pytest.raises(WorkerDied):
        await asyncio.wait_for(hanging, 10)
    # At once, while the killed one is being replaced: the other answers.
    assert await asyncio.wait_for(workers.run(whose, 7), 10) == (second, 7)
    for _ in range(300):  # and the replacement comes
        if len(workers.pids) == 2 and first not in workers.pids:
            break
        await asyncio.sleep(0.1)
    assert len(workers.pids) == 2 and first not in workers.pids


async def test_stop_leaves_no_worker_running() -> None:
    workers = WorkerProcesses(2, "test-worker")
    await workers.start()
    await workers.run(square, 2)
    pids = workers.pids
    await workers.stop()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
