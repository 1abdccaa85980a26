"""Rules owed by tenant/global decisions: created if approval-svc died before appending them.

``decide`` appends the decision (naming a new rule id) and then the RuleCreated; the
two are separate appends to separate aggregates. If the process dies in between, the
decision stands and its rule would be missing for good. The view keeps every such
rule as owed (``rules_owed``) until its RuleCreated is applied; this worker looks
every ``CHECK_SECONDS`` and creates a rule that was already owed at the previous look
(so a decision being made this very moment, here or on another replica, is left to
finish). The rule is the one the technician decided on: its name and match are on record
before the decision (RuleProposed); for a decision recorded before that event existed,
the request's draft stands in (``rule_draft``). Its event id is the one ``decide`` would
have used, and the rule aggregate must not exist yet: of every replica's worker and a
late ``decide``, exactly one writes it.
"""

from __future__ import annotations

import logging

from epm_events.ids import derived_event_id
from epm_service.publisher import ConcurrencyConflict

from epm_approval.context import Approval
from epm_approval.decisions import default_rule_name
from epm_approval.owed import OwedWork
from epm_approval.rule_admin import append_rule
from epm_approval.rules import draft_from_request
from epm_approval.view import OwedRule, find_request, owed_rules

log = logging.getLogger(__name__)

CHECK_SECONDS = 30.0


class OwedRules(OwedWork[str, OwedRule]):
    task_name = "owed-rules"
    failure = "could not create owed rules; trying again"

    def __init__(self, approval: Approval, every: float | None = None) -> None:
        self.a = approval
        self.every = CHECK_SECONDS if every is None else every

    async def owed(self) -> dict[str, OwedRule]:
        return {rule.rule_id: rule for rule in await self.a.view.read(owed_rules)}

    async def settle(self, item: OwedRule) -> None:
        await self.create(item)

    async def create(self, owed: OwedRule) -> None:
        found = await self.a.view.read(lambda c: find_request(c, owed.request_id))
        if found is None:  # pragma: no cover - the decision was applied after its request
            return
        request = found[0]
        try:
            await append_rule(
                self.a,
                tenant=owed.tenant,
                rule_id=owed.rule_id,
                name=owed.name or default_rule_name(request),
                effect=owed.effect,
                match=owed.match or draft_from_request(request.app),
                created_by=owed.decided_by,
                source_request_id=request.id,
                event_id=derived_event_id(owed.decision_event_id, "RuleCreated"),
                wait=False,
            )
        except ConcurrencyConflict:
            return  # created meanwhile (another replica, or the decision's own append)
        log.warning(
            "created the rule a decision was owed (approval-svc stopped between the two)",
            extra={"tenant": owed.tenant, "request_id": request.id, "rule_id": owed.rule_id},
        )
