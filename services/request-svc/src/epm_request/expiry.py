"""Expiry: undecided requests past their time get RequestExpired.

The schedule is the projection itself (open requests with ``expires_at``), so
a restart loses nothing; the append expects the request's last sequence, so
an expiry racing a decision yields exactly one outcome.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from epm_domain.request import expire
from epm_service.publisher import ConcurrencyConflict
from epm_service.runtime import ServiceContext
from epm_service.worker import TaskWorker

from epm_request import store

log = logging.getLogger(__name__)


class ExpiryScheduler(TaskWorker):
    task_name = "expiry"

    def __init__(self, ctx: ServiceContext, interval: float = 1.0) -> None:
        self.ctx = ctx
        self.store = ctx.projection_process(store.RequestStore.name)
        self.interval = interval

    async def _run(self) -> None:
        await self.store.wait_caught_up()
        while True:
            try:
                await self.expire_due(datetime.now(UTC))
            except Exception:
                log.exception("expiry pass failed; retrying")
            await asyncio.sleep(self.interval)

    async def expire_due(self, now: datetime, limit: int = 500) -> int:
        due = await self.store.read(lambda c: store.due_for_expiry(c, now, limit))
        done = 0
        for state, tenant, last_seq in due:
            request = store.request_from_json(state)
            event = expire(request, now)
            if event is None:
                continue
            try:
                appended = await self.ctx.publisher.append(tenant, [event], last_seq)
            except ConcurrencyConflict:
                continue  # decided (or expired by another replica) first
            done += 1
            log.info("request expired", extra={"tenant": tenant, "request_id": request.id})
            await self.store.wait_for(appended[-1].seq, timeout=5)
        return done
