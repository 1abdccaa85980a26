"""Stopping a worker ends its task even when Python 3.11's ``asyncio.wait_for`` swallows the
cancellation (the awaited future finished in the same loop turn as the cancel, gh-86296):
the intermittent teardown hang of session 2 was a relay loop that went on after its stop."""

from __future__ import annotations

import asyncio

import pytest
from epm_service.worker import TaskWorker, cancel_and_wait

pytestmark = pytest.mark.unit


async def test_wait_for_on_this_python_can_swallow_a_cancel() -> None:
    """The hazard itself: the future completes, then the task is cancelled before it resumes."""
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    rounds = 0

    async def loop_forever() -> None:
        nonlocal rounds
        while True:
            await asyncio.wait_for(fut if rounds == 0 else asyncio.sleep(0.01), 1.0)
            rounds += 1

    task = asyncio.create_task(loop_forever())
    await asyncio.sleep(0)  # the task waits on fut
    fut.set_result(1)
    task.cancel()
    await asyncio.sleep(0.05)
    swallowed = not task.done()
    await cancel_and_wait(task)
    assert task.done()
    if swallowed:  # 3.11 swallows; 3.12's wait_for does not
        assert rounds > 1


class Relay(TaskWorker):
    task_name = "relay"

    def __init__(self) -> None:
        self.fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting = asyncio.Event()

    async def _run(self) -> None:
        while True:
            self.waiting.set()
            await asyncio.wait_for(asyncio.shield(self.fut), 1.0)
            await asyncio.sleep(0.005)


async def test_stop_ends_a_worker_whose_wait_swallowed_the_cancel() -> None:
    relay = Relay()
    await relay.start()
    await relay.waiting.wait()
    relay.fut.set_result(None)  # done in the same turn as stop's cancel
    await asyncio.wait_for(relay.stop(), 5)
    assert relay._task is None


async def test_cancel_and_wait_returns_for_a_finished_task() -> None:
    task = asyncio.create_task(asyncio.sleep(0))
    await task
    await cancel_and_wait(task)


async def test_an_error_the_task_ended_with_is_logged_not_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fails() -> None:
        raise RuntimeError("relay broke")

    task = asyncio.create_task(fails(), name="relay")
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    [record] = [r for r in caplog.records if "had failed before it was stopped" in r.message]
    assert record.exc_info is not None and "relay broke" in str(record.exc_info[1])
