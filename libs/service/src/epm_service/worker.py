"""A service worker that is one background task (``ServiceContext.start_worker``), and the one
way a service ends a task it started (``cancel_and_wait``)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger(__name__)

CANCEL_RETRY_SECONDS = 0.5


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has ended, cancelling again while it runs on.

    One ``cancel()`` is not always enough on Python 3.11: ``asyncio.wait_for`` returns the
    result instead of raising when the future it waits on finished in the same loop turn as
    the cancel (gh-86296), and a loop around it then never ends, nor does a stop awaiting it.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=CANCEL_RETRY_SECONDS)
    if not task.cancelled() and task.exception() is not None:
        # It ended by itself, with an error nobody awaited: say so instead of dropping it.
        log.error(
            "task %s had failed before it was stopped",
            task.get_name(),
            exc_info=task.exception(),
        )


class TaskWorker:
    """``start`` runs ``_run`` as a task; ``stop`` cancels it and waits until it has ended.
    Subclasses set ``task_name`` and write ``_run`` (usually a loop that never returns)."""

    task_name = "worker"
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.task_name)

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    async def _run(self) -> None:
        raise NotImplementedError
