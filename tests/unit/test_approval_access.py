"""Who may decide and manage rules, and what a decision's rule looks like (no servers)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from epm_approval import access
from epm_approval.decisions import rule_from_decision
from epm_approval.rule_admin import require_match
from epm_domain.request import Request, decide, evolve
from epm_events.catalog import Actor, AppInfo, RequestCreated, RuleMatch
from epm_events.ids import GLOBAL_TENANT
from epm_service.errors import Forbidden, Invalid, NotFound
from epm_service.principal import Principal

TECH = Principal("t1", "alice", "tenant_technician", "acme")
ADMIN = Principal("t2", "ann", "tenant_admin", "acme")
MSP = Principal("t3", "mo", "msp_technician", None)
INTEGRATOR = Principal("t4", "ivy", "integrator", None)
NOW = datetime(2026, 1, 5, tzinfo=UTC)
APP = AppInfo(
    file_name="setup.exe",
    sha256="a" * 64,
    publisher="Contoso",
    app_name="Contoso Setup",
    path=r"C:\Users\bob\setup.exe",
)


def request() -> Request:
    created = RequestCreated(
        request_id="req-1",
        device_id="dev-1",
        user="bob",
        app=APP,
        created_at=NOW,
        expires_at=NOW + timedelta(days=4),
    )
    return evolve(None, created, "acme", NOW)


@pytest.mark.parametrize("who", [TECH, ADMIN])
def test_tenant_roles_decide_once_and_for_the_tenant_but_not_for_everyone(who: Principal) -> None:
    access.require_decider(who, "once")
    access.require_decider(who, "tenant")
    with pytest.raises(Forbidden):
        access.require_decider(who, "global")


def test_msp_roles_decide_any_scope_and_integrators_none() -> None:
    for scope in ("once", "tenant", "global"):
        access.require_decider(MSP, scope)
        with pytest.raises(Forbidden):
            access.require_decider(INTEGRATOR, scope)


def test_another_tenant_is_not_found_before_anything_is_forbidden() -> None:
    with pytest.raises(NotFound):
        access.require_visible(TECH, "globex", "request req-1")
    access.require_visible(TECH, "acme", "request req-1")
    access.require_visible(TECH, GLOBAL_TENANT, "rule r1")


def test_rule_writers_follow_the_role_table() -> None:
    access.require_rule_writer(ADMIN, "acme")
    access.require_rule_writer(MSP, GLOBAL_TENANT)
    with pytest.raises(Forbidden):
        access.require_rule_writer(TECH, "acme")
    with pytest.raises(Forbidden):
        access.require_rule_writer(ADMIN, GLOBAL_TENANT)


def test_a_decisions_rule_is_drafted_from_the_request_without_the_users_path() -> None:
    name, match = rule_from_decision(request(), {}, may_edit_match=False)
    assert name == "Contoso Setup (from request req-1)"
    assert match.model_dump(exclude_none=True) == {
        "sha256": "a" * 64,
        "publisher": "Contoso",
        "app_name": "Contoso Setup",
    }


def test_a_rule_writers_edits_replace_the_draft() -> None:
    name, match = rule_from_decision(
        request(),
        {"rule_name": "Contoso", "rule": {"publisher": "Contoso", "file_name": "*.exe"}},
        may_edit_match=True,
    )
    assert (name, match.publisher, match.sha256) == ("Contoso", "Contoso", None)
    name, match = rule_from_decision(
        request(), {"rule": {"name": "N", "match": {"app_name": "A"}}}, may_edit_match=True
    )
    assert (name, match.app_name) == ("N", "A")
    with pytest.raises(Invalid):
        rule_from_decision(request(), {"rule": {}}, may_edit_match=True)
    with pytest.raises(Invalid):
        rule_from_decision(request(), {"rule": {"sha256": "not-a-hash"}}, may_edit_match=True)


def test_a_tenant_technician_may_rename_and_narrow_the_draft_never_widen_it() -> None:
    draft = {"sha256": "a" * 64, "publisher": "Contoso", "app_name": "Contoso Setup"}
    name, match = rule_from_decision(
        request(),
        {"rule_name": "Setup", "rule": {**draft, "file_name": "setup.exe"}},
        may_edit_match=False,
    )
    assert (name, match.file_name, match.sha256) == ("Setup", "setup.exe", "a" * 64)
    for widened in ({"path": "*"}, {**draft, "publisher": "*"}, {"sha256": "a" * 64}):
        with pytest.raises(Forbidden, match="not change or drop what the request gave"):
            rule_from_decision(request(), {"rule": widened}, may_edit_match=False)


def test_a_rule_that_matches_everything_is_refused_even_with_wildcards() -> None:
    for everything in ({"path": "*"}, {"publisher": "?*"}, {"file_name": "**", "path": "*"}):
        with pytest.raises(Invalid, match="more than wildcards"):
            require_match(RuleMatch(**everything))
    require_match(RuleMatch(path="C:\\Apps\\*"))


def test_answers_name_who_decided_the_same_from_the_state_and_from_the_event() -> None:
    from epm_domain.request import answer_of, answer_of_event, decided_by, expire

    by_grant = Actor(kind="system", id="grant:req-0")
    approved = decide(request(), decision="approve", scope="once", by=by_grant, now=NOW)
    state = evolve(request(), approved, "acme", NOW)
    assert answer_of(state) == answer_of_event(approved)
    assert (answer_of(state).status, answer_of(state).decided_by) == ("approved", "grant:req-0")
    assert decided_by(Actor(kind="rule", id="rule-1")) == "rule:rule-1"
    assert decided_by(Actor(kind="technician", id="msp:ann")) == "technician:msp:ann"
    assert (answer_of(request()).status, answer_of(request()).decided_by) == ("open", None)
    expired = expire(request(), request().expires_at)
    assert expired is not None
    assert answer_of(evolve(request(), expired, "acme", NOW)) == answer_of_event(expired)


def test_only_rules_grants_and_once_approvals_change_an_automatic_decision() -> None:
    from epm_approval.view import affects_auto_decision
    from epm_events.catalog import Approved, RuleDisabled
    from epm_events.codec import encode
    from epm_events.envelope import new_envelope, subject_of
    from epm_service.projection import StoredMsg

    def stored(event: object) -> StoredMsg:
        env = new_envelope(event, tenant="acme", source="/epm/test")  # type: ignore[arg-type]
        return StoredMsg(1, subject_of(env), encode(env), env.id, 0)

    by_rule = Approved(request_id="req-1", scope="tenant", by=Actor(kind="rule", id="r"))
    once = Approved(
        request_id="req-1", scope="once", by=Actor(kind="technician", id="t"), grant_id="req-1"
    )
    assert not affects_auto_decision(stored(by_rule))
    assert affects_auto_decision(stored(once))
    quoting = Approved(
        request_id="req-1",
        scope="once",
        by=Actor(kind="technician", id="t"),
        grant_id="req-1",
        reason='"grant_id":null',  # escaped in the JSON: not taken for the field
    )
    assert affects_auto_decision(stored(quoting))
    assert affects_auto_decision(stored(RuleDisabled(rule_id="r", disabled_by="ann")))
    assert not affects_auto_decision(
        stored(
            RequestCreated(
                request_id="req-2",
                device_id="dev-1",
                user="bob",
                app=APP,
                created_at=NOW,
                expires_at=NOW + timedelta(days=4),
            )
        )
    )
    broken = StoredMsg(1, "epm.evt.acme.request.req-1.Approved", b"{not json", None, 0)
    assert affects_auto_decision(broken)
