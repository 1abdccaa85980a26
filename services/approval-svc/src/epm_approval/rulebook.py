"""The in-memory RuleIndex, kept in step with the ``rules`` table of the projection.

Why not update the index from the projection handler: the handler runs in the
projector's writer thread, inside a batch transaction that may still roll back
(and be replayed message by message), while ``evaluate`` runs on the event
loop. Instead the index follows the *committed* table: every rule row carries
the stream sequence of its last change (``last_seq``), and ``sync`` applies
the rows changed after the last one it applied. The projector publishes its
``position`` only after a batch commits, so everything up to that position is
visible to a read connection; batches commit in stream order, so a row that
appears later never has a smaller ``last_seq`` than one already applied.
All index mutation happens on the event loop, under one lock.
"""

from __future__ import annotations

import asyncio
import logging

from epm_events.catalog import AppInfo, RuleCreated, RuleDisabled
from epm_service.projection import Projector

from epm_approval.rules import EmptyRule, RuleIndex, Verdict
from epm_approval.view import rules_changed_after

log = logging.getLogger(__name__)

RULE_EVENTS = (RuleCreated.NAME, RuleDisabled.NAME)


class RuleBook:
    def __init__(self, projector: Projector) -> None:
        self.projector = projector
        self.index = RuleIndex()
        self._applied_seq = 0  # last rule change applied to the index
        self._synced_position = -1  # projector position the index is known to be current with
        self._lock = asyncio.Lock()

    async def sync(self) -> None:
        """Bring the index up to what the projection has committed (cheap when nothing moved)."""
        if self.projector.position <= self._synced_position:
            return
        last_change = max(self.projector.last_seq_of.get(n, 0) for n in RULE_EVENTS)
        if last_change <= self._applied_seq and self._synced_position >= 0:
            # No rule event committed since the last sync: skip the read (the hot path
            # of every online request runs through here).
            self._synced_position = self.projector.position
            return
        async with self._lock:
            position = self.projector.position  # read before the query: the rows include it
            if position <= self._synced_position:
                return
            changed = await self.projector.read(lambda c: rules_changed_after(c, self._applied_seq))
            for row in changed:
                try:
                    self.index.add(row.rule)  # a disabled rule is removed by add()
                except EmptyRule:
                    log.warning(
                        "rule without any match field ignored", extra={"rule_id": row.rule.id}
                    )
                self._applied_seq = max(self._applied_seq, row.last_seq)
            self._synced_position = position
            if changed:
                log.info(
                    "rule index updated",
                    extra={"changed": len(changed), "rules": len(self.index), "position": position},
                )

    async def evaluate(self, tenant: str, app: AppInfo) -> Verdict | None:
        await self.sync()
        return self.index.evaluate(tenant, app)
