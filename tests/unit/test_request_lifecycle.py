from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from epm_domain.request import Request, RequestError, create, decide, evolve, expire, use_approval
from epm_events.catalog import Actor, AppInfo, Approved, Denied, GrantConsumed

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
TECH = Actor(kind="technician", id="tenant_technician:alice")
APP = AppInfo(file_name="setup.exe", sha256="a" * 64, publisher="Contoso", app_name="Setup")


def opened(ttl: timedelta = timedelta(days=4)):  # type: ignore[no-untyped-def]
    ev = create(
        request_id="req-1",
        device_id="dev-1",
        user="bob",
        app=APP,
        reason="install",
        now=NOW,
        ttl=ttl,
    )
    return evolve(None, ev, "acme", NOW)


def test_new_request_is_open_and_expires_after_the_ttl() -> None:
    r = opened()
    assert r.status == "open" and r.expires_at == NOW + timedelta(days=4)


def test_approve_decides_the_request() -> None:
    r = opened()
    ev = decide(r, decision="approve", scope="once", by=TECH, now=NOW, grant_id="g1")
    assert isinstance(ev, Approved)
    r2 = evolve(r, ev, "acme", NOW)
    assert r2.status == "approved" and r2.decision is not None and r2.decision.grant_id == "g1"


def test_second_decision_is_rejected() -> None:
    r = opened()
    r = evolve(r, decide(r, decision="deny", scope="tenant", by=TECH, now=NOW), "acme", NOW)
    with pytest.raises(RequestError) as err:
        decide(r, decision="approve", scope="once", by=TECH, now=NOW)
    assert err.value.reason == "already_decided"


def test_decision_after_expiry_is_rejected_even_before_the_expiry_event() -> None:
    r = opened(ttl=timedelta(seconds=30))
    with pytest.raises(RequestError) as err:
        decide(r, decision="approve", scope="once", by=TECH, now=NOW + timedelta(seconds=31))
    assert err.value.reason == "expired"


def test_expiry_is_due_only_for_open_requests_past_their_time() -> None:
    r = opened(ttl=timedelta(seconds=30))
    assert expire(r, NOW) is None
    ev = expire(r, NOW + timedelta(seconds=30))
    assert ev is not None
    r2 = evolve(r, ev, "acme", NOW)
    assert r2.status == "expired"
    assert expire(r2, NOW + timedelta(days=1)) is None
    decided = evolve(r, Denied(request_id="req-1", scope="once", by=TECH), "acme", NOW)
    assert expire(decided, NOW + timedelta(days=9)) is None


def decided_by(r: Request, **how: Any) -> Request:
    """``r`` approved as ``how`` says (scope, by, and a rule or grant id)."""
    return evolve(r, decide(r, decision="approve", now=NOW, **how), "acme", NOW)


def test_using_a_once_approval_spends_the_grant_it_issued_on_the_request_itself() -> None:
    r = opened()
    approved = decided_by(r, scope="once", by=TECH, grant_id="req-1")
    spent = use_approval(approved, "dev-1")
    assert spent == GrantConsumed(grant_id="req-1", request_id="req-1", user="bob", sha256="a" * 64)


def test_using_an_approval_that_issued_no_grant_spends_nothing() -> None:
    r = opened()
    by_rule = decided_by(r, scope="tenant", by=Actor(kind="rule", id="rule-1"), rule_id="rule-1")
    assert use_approval(by_rule, "dev-1") is None


def test_only_the_requesting_device_may_use_an_approval_and_only_an_approval() -> None:
    r = opened()
    approved = decided_by(r, scope="once", by=TECH, grant_id="req-1")
    with pytest.raises(RequestError) as other:
        use_approval(approved, "dev-2")
    assert other.value.reason == "foreign_request"
    denied = evolve(r, decide(r, decision="deny", scope="once", by=TECH, now=NOW), "acme", NOW)
    for state in (r, denied):
        with pytest.raises(RequestError) as refused:
            use_approval(state, "dev-1")
        assert refused.value.reason == "not_approved"
