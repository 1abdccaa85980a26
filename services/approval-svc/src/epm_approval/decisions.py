"""Decisions on requests: by a one-time grant or a rule at once (``on_request_created``, a
reaction to every new RequestCreated), or by a technician (``decide``), plus the rule draft
a technician starts from.

"First decision wins" is JetStream's: every decision is appended with the
request's last stream sequence as expectation, so of any number of racing
decisions (and an expiry) exactly one is stored; the others get 409.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any, Literal

import nats.errors
from epm_domain.request import Request, RequestError, use_approval
from epm_domain.request import decide as decide_request
from epm_events.catalog import (
    Actor,
    Approved,
    Denied,
    GrantConsumed,
    RequestCreated,
    RuleMatch,
    RuleProposed,
    Scope,
)
from epm_events.codec import DecodeError
from epm_events.ids import (
    GLOBAL_TENANT,
    derived_event_id,
    derived_event_id_at,
    new_id,
    validate_device,
    validate_tenant,
    validate_token,
)
from epm_events.notices import Undecided
from epm_events.subjects import (
    DECIDING_EVERY_SECONDS,
    DECIDING_NOTICE,
    UNDECIDED_NOTICE,
    aggregate_filter,
)
from epm_service.errors import Conflict, Forbidden, Invalid, NotFound
from epm_service.principal import SYSTEM, Principal
from epm_service.projection import StoredMsg
from epm_service.publisher import Appended, ConcurrencyConflict
from epm_service.worker import TaskWorker
from nats.aio.client import Client

from epm_approval import access
from epm_approval.arguments import choice, model, text
from epm_approval.context import Approval
from epm_approval.history import load_request, read_events
from epm_approval.rule_admin import append_rule, require_match
from epm_approval.rules import draft_from_request
from epm_approval.view import affects_auto_decision, find_request, usable_grants

log = logging.getLogger(__name__)

DECISIONS = ("approve", "deny")
SCOPES = ("once", "tenant", "global")
AUTO_DECIDE_WAIT_SECONDS = 2.0


class Decisions:
    def __init__(self, approval: Approval) -> None:
        self.a = approval

    # --- a new request: a one-time grant or a rule decides it at once ------------------

    async def on_request_created(self, m: StoredMsg) -> None:
        """approval-svc's reaction to every new RequestCreated (``Projector.react`` on its
        view, which has received everything before it): a one-time grant or a rule decides
        it at once, else request-svc is told it waits for a technician (epm_request.answers
        answers the agent with either)."""
        try:
            env, created = self.a.view.decoded(m)
        except DecodeError:
            return  # the view dead-letters it
        if not isinstance(created, RequestCreated):
            return
        if await self.decide_at_once(env.tenant, created, m.seq) == "open":
            notice = Undecided(request_id=created.request_id).model_dump_json().encode()
            await self.a.nc.publish(UNDECIDED_NOTICE, notice)

    async def decide_at_once(
        self, tenant: str, created: RequestCreated, created_seq: int
    ) -> Literal["decided", "open", "taken"]:
        """``decided`` by a grant or a rule; ``open`` if neither decides it; ``taken`` if the
        request was decided or expired meanwhile (by anyone: another replica reacts too)."""
        request_id, user, app = created.request_id, created.user, created.app
        ids = {"tenant": tenant, "request_id": request_id}
        # Every rule and grant recorded before the request has a smaller sequence: once the
        # projection has applied everything up to the request, the answer accounts for all
        # of them. What it has received but still gathers for one commit is usually other
        # requests' events, which change no rule or grant: then it need not be written first.
        if not self.a.view.settled_through(
            created_seq - 1, affects_auto_decision
        ) and not await self.a.view.wait_for(created_seq - 1, timeout=AUTO_DECIDE_WAIT_SECONDS):
            log.warning("projection behind; request left open for a technician", extra=ids)
            return "open"
        grants = self.a.view.read_now(
            lambda c: usable_grants(c, tenant, user, app.sha256, request_id)
        )
        for grant in grants:
            # Grant first, decision second: the reverse order could approve two requests with
            # one grant. If the request is decided meanwhile the grant is spent unused; never
            # used twice. A grant this very request consumed (another replica reacting to it
            # too) goes on to its decision.
            if grant.consumed_by != request_id:
                consumed = GrantConsumed(
                    grant_id=grant.id, request_id=request_id, user=user, sha256=app.sha256
                )
                try:
                    # Expecting the grant's last sequence: of two requests racing for one
                    # grant, only one consumes it.
                    await self.a.publisher.append(
                        tenant,
                        [consumed],
                        grant.last_seq,
                        ids=[derived_event_id(f"{grant.id}:{request_id}", "GrantConsumed")],
                    )
                except ConcurrencyConflict:
                    # Consumed a moment ago: by another request (try the next grant), or for
                    # this one by another replica (JetStream checks the expected sequence
                    # before the duplicate id: a repeat is refused, not deduplicated).
                    if not await self._consumed_for(tenant, grant.id, request_id):
                        continue
                log.info("one-time grant consumed", extra={**ids, "grant_id": grant.id})
            approved = Approved(
                request_id=request_id,
                scope="once",
                by=Actor(kind="system", id=f"grant:{grant.id}"),
                reason=f"one-time grant from request {grant.id}",
            )
            return await self._append_at_once(tenant, approved, created, created_seq)
        verdict = await self.a.rules.evaluate(tenant, app)
        if verdict is None:
            return "open"
        rule = verdict.rule
        by = Actor(kind="rule", id=rule.id)
        scope: Scope = "global" if rule.tenant == GLOBAL_TENANT else "tenant"
        event: Approved | Denied
        if verdict.effect == "deny":
            event = Denied(request_id=request_id, scope=scope, by=by, rule_id=rule.id)
        else:
            event = Approved(request_id=request_id, scope=scope, by=by, rule_id=rule.id)
        log.info("rule matched", extra={**ids, "rule_id": rule.id, "effect": verdict.effect})
        return await self._append_at_once(tenant, event, created, created_seq)

    async def _consumed_for(self, tenant: str, grant_id: str, request_id: str) -> bool:
        """Whether the stream says this grant was consumed by this request."""
        return await self._consumed_by(tenant, grant_id) == request_id

    async def _consumed_by(self, tenant: str, grant_id: str) -> str | None:
        """The request the stream says consumed this grant, or None while it is unused."""
        recorded = await read_events(self.a.js, aggregate_filter(tenant, "grant", grant_id))
        return next(
            (r.event.request_id for r in recorded if isinstance(r.event, GrantConsumed)), None
        )

    async def use_approval(self, args: dict[str, Any], principal: Principal) -> dict[str, Any]:
        """request-svc's intake, when a device reports that its user used the approval of
        the device's own request as it arrived (the agent's ApprovalUsed): a technician's
        once-approval spends the grant it issued on that request (GrantConsumed), so the
        grant answers no later request. Judged on the stream, not the view (the report can
        come right after the decision). ``consumed_by`` says who spent it: this request, or
        a request of the user that came first; ``grant_id`` is None for an approval that
        issued no grant (a rule's, or one made by a grant)."""
        if principal.token_id != SYSTEM.token_id:
            raise Forbidden("use_approval is called by request-svc's intake only")
        tenant = validate_tenant(text(args, "tenant", max_len=63), allow_global=False)
        device_id = validate_device(text(args, "device_id", max_len=63))
        request_id = validate_token(text(args, "request_id", max_len=128), "request id")
        request, _ = await load_request(self.a.js, request_id, tenant)
        if request is None:
            raise NotFound(f"request {request_id} not found in tenant {tenant}")
        try:
            spent = use_approval(request, device_id)
        except RequestError as exc:
            if exc.reason == "foreign_request":
                raise Forbidden(str(exc), extra={"reason": exc.reason}) from None
            raise Conflict(str(exc), extra={"reason": exc.reason}) from None
        if spent is None:
            return {"request_id": request_id, "grant_id": None, "consumed_by": None}
        ids = {"tenant": tenant, "request_id": request_id, "grant_id": spent.grant_id}
        consumed_by = await self._consumed_by(tenant, spent.grant_id)
        if consumed_by is None:
            try:
                # Expecting the unused grant's empty aggregate: of this use and a request of
                # the user racing for the grant, exactly one consumes it.
                await self.a.publisher.append(
                    tenant,
                    [spent],
                    0,
                    ids=[derived_event_id(f"{spent.grant_id}:{request_id}", GrantConsumed.NAME)],
                )
                consumed_by = request_id
                log.info("one-time grant used by the request it approved", extra=ids)
            except ConcurrencyConflict:
                consumed_by = await self._consumed_by(tenant, spent.grant_id)
        if consumed_by != request_id:
            log.info(
                "one-time grant was consumed before its use was reported",
                extra={**ids, "consumed_by": consumed_by},
            )
        return {"request_id": request_id, "grant_id": spent.grant_id, "consumed_by": consumed_by}

    async def _append_at_once(
        self, tenant: str, event: Approved | Denied, created: RequestCreated, expected: int
    ) -> Literal["decided", "taken"]:
        # The same id from every replica, in time order (the events' indexes take it at
        # their end): from the request and the time it carries.
        event_id = derived_event_id_at(event.request_id, "auto-decision", created.created_at)
        try:
            [done] = await self.a.publisher.append(tenant, [event], expected, ids=[event_id])
        except ConcurrencyConflict:
            return "taken"  # decided or expired meanwhile: the stream has the answer
        log.info(
            "request decided at once",
            extra={"tenant": tenant, "request_id": event.request_id, "event_id": done.envelope.id},
        )
        return "decided"

    # --- decide: a technician's decision --------------------------------------------

    async def decide(self, args: dict[str, Any], principal: Principal) -> dict[str, Any]:
        request_id = text(args, "request_id", max_len=128)
        decision: Literal["approve", "deny"] = _decision(choice(args, "decision", DECISIONS))
        scope: Scope = _scope(choice(args, "scope", SCOPES))
        reason = text(args, "reason", max_len=2000, default="")
        request, last_seq = await self._visible_request(request_id, principal)
        access.require_decider(principal, scope)
        new_rule = None
        if scope != "once":
            new_rule = rule_from_decision(
                request, args, may_edit_match=access.may_write_rules(principal)
            )
        by = Actor(kind="technician", id=principal.actor)
        rule_id = new_id("rule") if new_rule else None
        rule_tenant = GLOBAL_TENANT if scope == "global" else request.tenant
        if new_rule is not None and rule_id is not None:
            # A decision that cannot stand (decided or expired, maybe by another replica
            # a moment ago) must not leave a proposal behind: judge it on the stream's own
            # state first. Only a decision racing another within milliseconds still can.
            fresh, fresh_seq = await load_request(self.a.js, request.id, request.tenant)
            if fresh is not None:
                request, last_seq = fresh, fresh_seq
            _decision_event(request, decision, scope, by, rule_id, None, reason)
            # Before the decision: once the decision stands, the rule it owes is on record
            # exactly as the technician left it (epm_approval.owed_rules).
            name, match = new_rule
            await self.a.publisher.append(
                rule_tenant,
                [RuleProposed(rule_id=rule_id, request_id=request.id, name=name, match=match)],
                0,
            )
        done = await self._append_decision(
            request,
            last_seq,
            decision=decision,
            scope=scope,
            by=by,
            rule_id=rule_id,
            grant_id=request.id if (decision == "approve" and scope == "once") else None,
            reason=reason,
        )
        ids = {"tenant": request.tenant, "request_id": request.id, "event_id": done.envelope.id}
        log.info("request decided", extra={**ids, "decision": decision, "scope": scope})
        last = done.seq
        result: dict[str, Any] = {"request_id": request.id, "decision": decision, "scope": scope}
        if new_rule is not None and rule_id is not None:
            name, match = new_rule
            row = await append_rule(
                self.a,
                tenant=rule_tenant,
                rule_id=rule_id,
                name=name,
                effect="allow" if decision == "approve" else "deny",
                match=match,
                created_by=principal.actor,
                source_request_id=request.id,
                event_id=derived_event_id(done.envelope.id, "RuleCreated"),
                wait=False,
            )
            last = row.last_seq
            result["rule_id"] = rule_id
        await self.a.applied(last)
        return result

    async def _append_decision(
        self,
        request: Request,
        last_seq: int,
        *,
        decision: Literal["approve", "deny"],
        scope: Scope,
        by: Actor,
        rule_id: str | None,
        grant_id: str | None,
        reason: str,
    ) -> Appended:
        for _attempt in range(2):
            event = _decision_event(request, decision, scope, by, rule_id, grant_id, reason)
            try:
                [done] = await self.a.publisher.append(request.tenant, [event], last_seq)
                return done
            except ConcurrencyConflict:
                # The projection may only be behind: decide again on the stream's own state.
                fresh, last_seq = await load_request(self.a.js, request.id, request.tenant)
                if fresh is None:  # pragma: no cover - a request never disappears
                    raise NotFound(f"request {request.id} not found") from None
                request = fresh
        raise Conflict(
            f"request {request.id} changed while it was being decided; reload it and try again"
        )

    # --- rule_draft --------------------------------------------------------------

    async def rule_draft(self, args: dict[str, Any], principal: Principal) -> dict[str, Any]:
        request, _ = await self._visible_request(text(args, "request_id", max_len=128), principal)
        access.require_rule_reader(principal)
        return {
            "name": default_rule_name(request),
            "scope": "tenant",
            "tenant": request.tenant,
            "effect": "allow",
            "match": draft_from_request(request.app).model_dump(exclude_none=True),
            "enabled": True,
            "created_by": principal.actor,
            "source_request_id": request.id,
        }

    async def _visible_request(self, request_id: str, principal: Principal) -> tuple[Request, int]:
        """The request and its last sequence; 404 if unknown or in a tenant not visible."""
        validate_token(request_id, "request id")
        found = await self.a.view.read(lambda c: find_request(c, request_id))
        if found is None:
            # Not projected yet (just created)? The stream is the truth.
            state, last = await load_request(self.a.js, request_id)
            found = (state, last) if state is not None else None
        if found is None:
            raise NotFound(f"request {request_id} not found; check the id")
        access.require_visible(principal, found[0].tenant, f"request {request_id}")
        return found


def _decision_event(
    request: Request,
    decision: Literal["approve", "deny"],
    scope: Scope,
    by: Actor,
    rule_id: str | None,
    grant_id: str | None,
    reason: str,
) -> Approved | Denied:
    """The domain's decision on the request as it stands; 409 if it cannot stand (decided,
    expired)."""
    try:
        return decide_request(
            request,
            decision=decision,
            scope=scope,
            by=by,
            now=datetime.now(UTC),
            rule_id=rule_id,
            grant_id=grant_id,
            reason=reason,
        )
    except RequestError as exc:
        raise Conflict(str(exc), extra={"reason": exc.reason}) from None


def _decision(value: str) -> Literal["approve", "deny"]:
    return "approve" if value == "approve" else "deny"


def _scope(value: str) -> Scope:
    if value == "once":
        return "once"
    return "tenant" if value == "tenant" else "global"


def rule_from_decision(
    request: Request, args: dict[str, Any], *, may_edit_match: bool
) -> tuple[str, RuleMatch]:
    """Name and match of the rule a tenant/global decision creates: the technician's edits,
    else the draft from the request (SHA-256, publisher, app name; never the user's path).

    Who may not write rules (a tenant technician) may rename the draft and narrow it with
    more fields, never widen or change it: the rule their decision creates is the one
    DESIGN.md pre-fills from the request ("name editable")."""
    given = args.get("rule")
    name = args.get("rule_name")
    draft = draft_from_request(request.app)
    if given is None:
        match = draft
    else:
        if not isinstance(given, dict):
            raise Invalid("'rule' must be an object: a rule match, or a rule with a 'match'")
        if "match" in given:
            name = name or given.get("name")
            given = given["match"]
        match = model(RuleMatch, given, "rule match")
        changed = [
            f for f, v in draft.model_dump(exclude_none=True).items() if getattr(match, f) != v
        ]
        if changed and not may_edit_match:
            raise Forbidden(
                "your role may rename the rule a decision creates and add fields to it, not "
                f"change or drop what the request gave ({', '.join(changed)}); leave "
                "'rule' out for the pre-filled rule, or ask a tenant admin for another rule"
            )
    require_match(match)
    if name is None:
        name = default_rule_name(request)
    if not isinstance(name, str) or not 1 <= len(name.strip()) <= 200:
        raise Invalid("'rule_name' must be 1-200 characters")
    return name.strip(), match


def default_rule_name(request: Request) -> str:
    what = request.app.app_name or request.app.file_name
    return f"{what} (from request {request.id})"[:200]


class Deciding(TaskWorker):
    """Says on ``DECIDING_NOTICE``, every ``DECIDING_EVERY_SECONDS``, that this replica
    reacts to new requests: started once the reactions are, so request-svc knows when no
    replica does (epm_request.answers)."""

    task_name = "deciding-notice"

    def __init__(self, nc: Client) -> None:
        self.nc = nc

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(nats.errors.Error):
                await self.nc.publish(DECIDING_NOTICE, b"")
            await asyncio.sleep(DECIDING_EVERY_SECONDS)
