"""Work a view says is owed, done by whichever replica looks: what was owed at the previous
look too is settled now, so work being done this very moment (here, or on another replica)
is left to finish. ``OwedRules`` and ``OwedRotations`` are two such."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable
from typing import Generic, TypeVar

from epm_service.worker import TaskWorker

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class OwedWork(TaskWorker, Generic[K, T]):
    every: float
    failure = "could not settle owed work; trying again"

    async def owed(self) -> dict[K, T]:
        """What is owed now, by key, in the order to settle it."""
        raise NotImplementedError

    async def settle(self, item: T) -> None:
        raise NotImplementedError

    async def _run(self) -> None:
        earlier: set[K] = set()
        while True:
            await asyncio.sleep(self.every)
            try:
                owed = await self.owed()
                for key, item in owed.items():
                    if key in earlier:
                        await self.settle(item)
                earlier = set(owed)
            except Exception:
                log.exception(self.failure)
