"""The elevation request aggregate: ``decide(state, command) -> events``, ``evolve(state, event)``.

No I/O. The caller appends the returned events with the aggregate's last
sequence as the expectation, so "first decision wins" holds across replicas.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import singledispatch
from typing import Literal

from epm_events.agent import RequestAnswer
from epm_events.catalog import (
    Actor,
    AppInfo,
    Approved,
    Denied,
    Event,
    GrantConsumed,
    RequestCreated,
    RequestExpired,
    Scope,
)

Status = Literal["open", "approved", "denied", "expired"]
STATUSES: tuple[Status, ...] = ("open", "approved", "denied", "expired")


class RequestError(Exception):
    """A command the request's current state refuses; ``reason`` is machine-readable."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Decision:
    decision: Literal["approve", "deny"]
    scope: Scope
    by: Actor
    at: datetime
    rule_id: str | None = None
    grant_id: str | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Request:
    id: str
    tenant: str
    device_id: str
    user: str
    app: AppInfo
    reason: str
    created_at: datetime
    expires_at: datetime
    status: Status = "open"
    decision: Decision | None = None
    expired_at: datetime | None = None


# --- commands -----------------------------------------------------------------


def create(
    *,
    request_id: str,
    device_id: str,
    user: str,
    app: AppInfo,
    reason: str,
    now: datetime,
    ttl: timedelta,
) -> RequestCreated:
    return RequestCreated(
        request_id=request_id,
        device_id=device_id,
        user=user,
        app=app,
        reason=reason,
        created_at=now,
        expires_at=now + ttl,
    )


def decide(
    request: Request,
    *,
    decision: Literal["approve", "deny"],
    scope: Scope,
    by: Actor,
    now: datetime,
    rule_id: str | None = None,
    grant_id: str | None = None,
    reason: str = "",
) -> Approved | Denied:
    _require_open(request, now)
    if decision == "approve":
        return Approved(
            request_id=request.id,
            scope=scope,
            by=by,
            rule_id=rule_id,
            grant_id=grant_id,
            reason=reason,
        )
    return Denied(request_id=request.id, scope=scope, by=by, rule_id=rule_id, reason=reason)


def expire(request: Request, now: datetime) -> RequestExpired | None:
    """The expiry due at ``now``, or None if the request is decided or not due yet."""
    if request.status != "open" or now < request.expires_at:
        return None
    return RequestExpired(request_id=request.id)


def use_approval(request: Request, device_id: str) -> GrantConsumed | None:
    """What the device's use of its request's approval spends: the one-time grant a
    technician's once-approval issued (GrantConsumed on the request itself, so the grant
    answers no later request); None for an approval that issued no grant (a rule's, or one
    made by a grant that was consumed when it was made)."""
    if request.device_id != device_id:
        raise RequestError(
            "foreign_request",
            f"request {request.id} was made by device {request.device_id}, not {device_id}",
        )
    d = request.decision
    if request.status != "approved" or d is None or d.decision != "approve":
        raise RequestError(
            "not_approved",
            f"request {request.id} is {request.status}, not approved: there is no approval to use",
        )
    if d.grant_id is None:
        return None
    return GrantConsumed(
        grant_id=d.grant_id, request_id=request.id, user=request.user, sha256=request.app.sha256
    )


def _require_open(request: Request, now: datetime) -> None:
    if request.status == "expired" or (request.status == "open" and now >= request.expires_at):
        raise RequestError(
            "expired",
            f"request {request.id} expired at {request.expires_at.isoformat()}; "
            "the user must ask again",
        )
    if request.status != "open":
        d = request.decision
        who = f" by {d.by.id}" if d else ""
        raise RequestError(
            "already_decided", f"request {request.id} was already {request.status}{who}"
        )


# --- state ----------------------------------------------------------------------


def evolve(state: Request | None, event: Event, tenant: str, at: datetime) -> Request:
    """The request after ``event``; ``at`` is when the event was recorded."""
    return _evolve(event, state, tenant, at)


@singledispatch
def _evolve(event: Event, state: Request | None, tenant: str, at: datetime) -> Request:
    raise TypeError(f"{type(event).__name__} is not a request event")


@_evolve.register
def _(event: RequestCreated, state: Request | None, tenant: str, at: datetime) -> Request:
    return Request(
        id=event.request_id,
        tenant=tenant,
        device_id=event.device_id,
        user=event.user,
        app=event.app,
        reason=event.reason,
        created_at=event.created_at,
        expires_at=event.expires_at,
    )


@_evolve.register
def _(event: Approved, state: Request | None, tenant: str, at: datetime) -> Request:
    assert state is not None
    return replace(state, status="approved", decision=decision_of(event, at))


@_evolve.register
def _(event: Denied, state: Request | None, tenant: str, at: datetime) -> Request:
    assert state is not None
    return replace(state, status="denied", decision=decision_of(event, at))


@_evolve.register
def _(event: RequestExpired, state: Request | None, tenant: str, at: datetime) -> Request:
    assert state is not None
    return replace(state, status="expired", expired_at=at)


def status_after(e: Approved | Denied) -> Status:
    """What a request is once this decision stands."""
    return "approved" if isinstance(e, Approved) else "denied"


def decision_of(e: Approved | Denied, at: datetime) -> Decision:
    """The decision an Approved or Denied recorded at ``at`` gives its request."""
    return Decision(
        decision="approve" if isinstance(e, Approved) else "deny",
        scope=e.scope,
        by=e.by,
        at=at,
        rule_id=e.rule_id,
        grant_id=getattr(e, "grant_id", None),
        reason=e.reason,
    )


# --- what the agent is told -----------------------------------------------------------


def decided_by(by: Actor) -> str:
    """Who decided, as an agent's answer names it: ``rule:<id>``, ``grant:<id>`` (the
    system acting on a one-time grant), ``technician:<name>``."""
    return by.id if by.kind == "system" else f"{by.kind}:{by.id}"


def answer_of(r: Request) -> RequestAnswer:
    """The answer for a request as it stands."""
    d = r.decision
    return RequestAnswer(
        request_id=r.id,
        status=r.status,
        decided_by="system" if r.status == "expired" else decided_by(d.by) if d else None,
        rule_id=d.rule_id if d else None,
        scope=d.scope if d else None,
    )


def answer_of_event(event: Approved | Denied | RequestExpired) -> RequestAnswer:
    """The answer a decision (or the expiry) gives, from the event alone."""
    if isinstance(event, RequestExpired):
        return RequestAnswer(request_id=event.request_id, status="expired", decided_by="system")
    return RequestAnswer(
        request_id=event.request_id,
        status="approved" if isinstance(event, Approved) else "denied",
        decided_by=decided_by(event.by),
        rule_id=event.rule_id,
        scope=event.scope,
    )


REQUEST_EVENTS: tuple[type[Event], ...] = (RequestCreated, Approved, Denied, RequestExpired)
