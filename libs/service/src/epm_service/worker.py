"""A service worker that is one background task (``ServiceContext.start_worker``)."""

from __future__ import annotations

import asyncio
import contextlib


class TaskWorker:
    """``start`` runs ``_run`` as a task; ``stop`` cancels it and waits until it has ended.
    Subclasses set ``task_name`` and write ``_run`` (usually a loop that never returns)."""

    task_name = "worker"
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.task_name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        raise NotImplementedError
