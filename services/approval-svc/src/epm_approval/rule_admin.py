"""Rules as technicians and admins manage them: list, create, disable.

Tenant rules live under their tenant, rules for all customers under
``_global``; both are aggregates of their own (``rule.<id>``), created with
expected sequence 0 and disabled with the rule's last sequence.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from epm_events.catalog import Effect, RuleCreated, RuleDisabled, RuleMatch
from epm_events.ids import GLOBAL_TENANT, new_id, validate_tenant, validate_token
from epm_events.subjects import EVENTS_PREFIX
from epm_service.errors import Invalid, NotFound
from epm_service.principal import Principal
from epm_service.publisher import ConcurrencyConflict
from epm_service.tenants import tenant_exists

from epm_approval import access
from epm_approval.arguments import choice, integer, model, text
from epm_approval.context import Approval
from epm_approval.history import read_events
from epm_approval.rules import FIELDS, Rule, has_literal
from epm_approval.view import RuleRow, find_rule, list_rules

log = logging.getLogger(__name__)

PAGE = 100
MAX_PAGE = 500


def require_match(match: RuleMatch) -> None:
    """At least one field with something to match besides wildcards: ``*`` or ``?*`` alone
    would match every application (``{"path": "*"}`` approving anything anyone runs)."""
    if not any(has_literal(getattr(match, f)) for f in FIELDS):
        raise Invalid(
            "a rule must match on at least one of: " + ", ".join(FIELDS) + " with more than "
            "wildcards (a rule that matches everything is not allowed)"
        )


async def append_rule(
    a: Approval,
    *,
    tenant: str,
    rule_id: str,
    name: str,
    effect: Effect,
    match: RuleMatch,
    created_by: str,
    source_request_id: str | None = None,
    event_id: str | None = None,
    wait: bool = True,
) -> RuleRow:
    scope: Literal["tenant", "global"] = "global" if tenant == GLOBAL_TENANT else "tenant"
    event = RuleCreated(
        rule_id=rule_id,
        name=name,
        scope=scope,
        effect=effect,
        match=match,
        created_by=created_by,
        source_request_id=source_request_id,
    )
    [done] = await a.publisher.append(tenant, [event], 0, ids=[event_id] if event_id else None)
    log.info(
        "rule created",
        extra={
            "tenant": tenant,
            "rule_id": rule_id,
            "request_id": source_request_id,
            "event_id": done.envelope.id,
            "effect": effect,
        },
    )
    if wait:
        await a.applied(done.seq)
    rule = Rule(id=rule_id, name=name, tenant=tenant, effect=effect, match=match)
    return RuleRow(rule, created_by, source_request_id, done.seq, done.seq)


class RuleAdmin:
    def __init__(self, approval: Approval) -> None:
        self.a = approval

    async def list_rules(self, args: dict[str, Any], principal: Principal) -> dict[str, Any]:
        tenant = self._tenant_arg(args, principal)  # another tenant: 404 before the role's 403
        access.require_rule_reader(principal)
        limit = min(integer(args, "limit", default=PAGE, low=1), MAX_PAGE)
        after = integer(args, "cursor", default=0)
        rows, next_cursor = await self.a.view.read(lambda c: list_rules(c, tenant, after, limit))
        out: dict[str, Any] = {"items": [r.to_api() for r in rows]}
        if next_cursor is not None:
            out["next_cursor"] = str(next_cursor)
        return out

    async def create_rule(self, args: dict[str, Any], principal: Principal) -> dict[str, Any]:
        tenant = self._tenant_arg(args, principal)
        access.require_rule_writer(principal, tenant)
        name = text(args, "name").strip()
        if not name:
            raise Invalid("'name' must not be empty")
        effect: Effect = "deny" if choice(args, "effect", ("allow", "deny")) == "deny" else "allow"
        match = model(RuleMatch, args.get("match"), "rule match")
        require_match(match)
        if tenant != GLOBAL_TENANT and not await self._tenant_known(tenant):
            raise NotFound(f"tenant {tenant} not found; create it first or check the id")
        row = await append_rule(
            self.a,
            tenant=tenant,
            rule_id=new_id("rule"),
            name=name,
            effect=effect,
            match=match,
            created_by=principal.actor,
        )
        return row.to_api()

    async def disable_rule(self, args: dict[str, Any], principal: Principal) -> dict[str, Any]:
        rule_id = validate_token(text(args, "rule_id", max_len=128), "rule id")
        row = await self.a.view.read(lambda c: find_rule(c, rule_id))
        if row is None:
            row = await self._rule_from_stream(rule_id)
        if row is None:
            raise NotFound(f"rule {rule_id} not found; check the id")
        access.require_visible(principal, row.rule.tenant, f"rule {rule_id}")
        access.require_rule_writer(principal, row.rule.tenant)
        if not row.rule.enabled:
            return {}  # disabling twice changes nothing
        event = RuleDisabled(rule_id=rule_id, disabled_by=principal.actor)
        try:
            [done] = await self.a.publisher.append(row.rule.tenant, [event], row.last_seq)
        except ConcurrencyConflict:
            return {}  # a rule's only later event is its disabling: someone was first
        log.info(
            "rule disabled",
            extra={"tenant": row.rule.tenant, "rule_id": rule_id, "event_id": done.envelope.id},
        )
        await self.a.applied(done.seq)
        return {}

    def _tenant_arg(self, args: dict[str, Any], principal: Principal) -> str:
        """The ``tenant`` argument (absent: the global rules), visible to the principal."""
        value = args.get("tenant")
        if value is None or value == "":
            return GLOBAL_TENANT
        tenant = validate_tenant(text(args, "tenant", max_len=63), allow_global=False)
        access.require_visible(principal, tenant, f"tenant {tenant}")
        return tenant

    async def _tenant_known(self, tenant: str) -> bool:
        if await self.a.tenants.read(lambda c: tenant_exists(c, tenant)):
            return True
        # Created a moment ago and not projected yet? Ask the stream.
        return bool(await read_events(self.a.js, f"{EVENTS_PREFIX}.*.tenant.{tenant}.*"))

    async def _rule_from_stream(self, rule_id: str) -> RuleRow | None:
        """A rule created a moment ago and not projected yet."""
        row: RuleRow | None = None
        for r in await read_events(self.a.js, f"{EVENTS_PREFIX}.*.rule.{rule_id}.*"):
            e = r.event
            if isinstance(e, RuleCreated):
                rule = Rule(rule_id, e.name, r.env.tenant, e.effect, e.match)
                row = RuleRow(rule, e.created_by, e.source_request_id, r.seq, r.seq)
            elif isinstance(e, RuleDisabled) and row is not None:
                disabled = Rule(
                    rule_id, row.rule.name, row.rule.tenant, row.rule.effect, row.rule.match, False
                )
                row = RuleRow(
                    disabled, row.created_by, row.source_request_id, row.created_seq, r.seq
                )
        return row
