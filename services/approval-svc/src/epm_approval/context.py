"""What approval-svc's command handlers work with, built once from the service context."""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from epm_service.projection import Projector
from epm_service.publisher import EventPublisher
from epm_service.runtime import ServiceContext
from nats.aio.client import Client
from nats.js import JetStreamContext

from epm_approval.rulebook import RuleBook

VIEW = "approval"
TENANTS = "tenants"
READ_YOUR_WRITES_SECONDS = 5.0


@dataclass
class Approval:
    nc: Client
    js: JetStreamContext
    publisher: EventPublisher
    view: Projector  # requests, rules, grants (epm_approval.view)
    tenants: Projector  # TenantDirectory
    rules: RuleBook

    @classmethod
    def of(cls, ctx: ServiceContext) -> Approval:
        """The one Approval of a running service: the command table and ``on_start`` share it
        (and with it the rule index), so it is kept per projector instance."""
        view = ctx.projector(VIEW)
        found = _RUNNING.get(view)
        if found is None:
            found = _RUNNING[view] = cls(
                nc=ctx.bus.nc,
                js=ctx.bus.js,
                publisher=ctx.publisher,
                view=view,
                tenants=ctx.projector(TENANTS),
                rules=RuleBook(view),
            )
        return found

    async def applied(self, seq: int) -> None:
        """Read-your-writes: until our own projection has applied ``seq`` (bounded)."""
        await self.view.wait_for(seq, timeout=READ_YOUR_WRITES_SECONDS)


_RUNNING: weakref.WeakKeyDictionary[Projector, Approval] = weakref.WeakKeyDictionary()
