"""The gateway's pure domain: the role table, authorize, token rules and hashing."""

from __future__ import annotations

import hashlib

import pytest
from epm_events.ids import GLOBAL_TENANT, InvalidId
from epm_gateway.domain import (
    PERMISSIONS,
    Verdict,
    authorize,
    authorize_issue,
    authorize_revoke,
    bootstrap_token_id,
    event_tenant,
    hash_token,
    hashes_match,
    new_token,
    token_scope_problem,
    validate_new_tenant_id,
)
from epm_service.principal import ROLES, Principal, Role, a_role

MSP_ADMIN = Principal("tok-1", "ops", "msp_admin", None)
MSP_TECH = Principal("tok-2", "tech", "msp_technician", None)
ADMIN_A = Principal("tok-3", "alice", "tenant_admin", "acme")
TECH_A = Principal("tok-4", "tom", "tenant_technician", "acme")
INTEGRATOR_A = Principal("tok-5", "siem", "integrator", "acme")
INTEGRATOR_ALL = Principal("tok-6", "siem-all", "integrator", None)


def test_every_role_has_a_row_in_the_role_table() -> None:
    assert set(PERMISSIONS) == set(ROLES)


def test_msp_admin_may_do_everything_in_every_tenant() -> None:
    for action in PERMISSIONS["msp_admin"]:
        assert authorize(MSP_ADMIN, action, "acme") is Verdict.ALLOW
        assert authorize(MSP_ADMIN, action, None) is Verdict.ALLOW


def test_only_msp_admin_creates_tenants() -> None:
    assert authorize(MSP_ADMIN, "tenants.create", None) is Verdict.ALLOW
    for p in (MSP_TECH, ADMIN_A, TECH_A, INTEGRATOR_A, INTEGRATOR_ALL):
        assert authorize(p, "tenants.create", None) is Verdict.FORBIDDEN


def test_another_tenants_resources_are_hidden_not_forbidden() -> None:
    for p in (ADMIN_A, TECH_A, INTEGRATOR_A):
        assert authorize(p, "requests.read", "globex") is Verdict.HIDDEN
        assert authorize(p, "tokens.issue", "globex") is Verdict.HIDDEN


def test_a_forbidden_action_in_ones_own_tenant_is_forbidden() -> None:
    assert authorize(TECH_A, "tokens.issue", "acme") is Verdict.FORBIDDEN
    assert authorize(INTEGRATOR_A, "decisions.once", "acme") is Verdict.FORBIDDEN
    assert authorize(TECH_A, "decisions.global", "acme") is Verdict.FORBIDDEN


def test_tenant_roles_act_within_their_tenant() -> None:
    assert authorize(ADMIN_A, "tokens.issue", "acme") is Verdict.ALLOW
    assert authorize(ADMIN_A, "offline_policy.write", "acme") is Verdict.ALLOW
    assert authorize(TECH_A, "decisions.tenant", "acme") is Verdict.ALLOW


def test_tenant_roles_may_not_act_msp_wide() -> None:
    for p in (ADMIN_A, TECH_A, INTEGRATOR_A):
        assert authorize(p, "rules.read", None) is Verdict.FORBIDDEN
        assert authorize(p, "rules.read", GLOBAL_TENANT) is Verdict.FORBIDDEN


def test_integrators_are_read_only() -> None:
    assert authorize(INTEGRATOR_ALL, "events.read", "acme") is Verdict.ALLOW
    assert authorize(INTEGRATOR_ALL, "audit.read", None) is Verdict.ALLOW
    assert authorize(INTEGRATOR_ALL, "rules.write", "acme") is Verdict.FORBIDDEN


def test_msp_technician_decides_any_scope_but_issues_no_tokens() -> None:
    assert authorize(MSP_TECH, "decisions.global", "acme") is Verdict.ALLOW
    assert authorize(MSP_TECH, "tokens.issue", "acme") is Verdict.FORBIDDEN


@pytest.mark.parametrize("role", ROLES)
def test_msp_admin_issues_tokens_of_any_role(role: Role) -> None:
    tenant = None if role in ("msp_admin", "msp_technician", "integrator") else "acme"
    assert authorize_issue(MSP_ADMIN, role, tenant) is Verdict.ALLOW


@pytest.mark.parametrize("role", ["tenant_admin", "tenant_technician", "integrator"])
def test_tenant_admin_issues_tenant_roles_in_its_own_tenant(role: Role) -> None:
    assert authorize_issue(ADMIN_A, role, "acme") is Verdict.ALLOW
    assert authorize_issue(ADMIN_A, role, "globex") is Verdict.HIDDEN


@pytest.mark.parametrize("role", ["msp_admin", "msp_technician"])
def test_tenant_admin_may_not_issue_msp_roles(role: Role) -> None:
    assert authorize_issue(ADMIN_A, role, None) is Verdict.FORBIDDEN
    assert authorize_issue(ADMIN_A, role, "acme") is Verdict.FORBIDDEN


def test_tenant_admin_may_not_issue_an_all_tenants_integrator() -> None:
    assert authorize_issue(ADMIN_A, "integrator", None) is Verdict.FORBIDDEN


def test_technicians_issue_no_tokens() -> None:
    assert authorize_issue(TECH_A, "tenant_technician", "acme") is Verdict.FORBIDDEN


def test_token_scope_must_fit_the_role() -> None:
    assert token_scope_problem("msp_admin", "acme") is not None
    assert token_scope_problem("tenant_admin", None) is not None
    assert token_scope_problem("tenant_technician", None) is not None
    assert token_scope_problem("integrator", None) is None
    assert token_scope_problem("integrator", "acme") is None
    assert token_scope_problem("msp_technician", None) is None


def test_anyone_may_revoke_their_own_token() -> None:
    assert authorize_revoke(TECH_A, TECH_A.token_id, "acme") is Verdict.ALLOW


def test_revoking_follows_tenant_walls() -> None:
    assert authorize_revoke(ADMIN_A, "tok-x", "acme") is Verdict.ALLOW
    assert authorize_revoke(ADMIN_A, "tok-x", "globex") is Verdict.HIDDEN
    assert authorize_revoke(ADMIN_A, "tok-x", None) is Verdict.HIDDEN
    assert authorize_revoke(TECH_A, "tok-x", "acme") is Verdict.FORBIDDEN
    assert authorize_revoke(MSP_ADMIN, "tok-x", None) is Verdict.ALLOW


def test_new_tokens_are_prefixed_and_unique() -> None:
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(t.startswith("epm_") and len(t) >= 40 for t in tokens)


def test_tokens_are_stored_as_sha256_hex() -> None:
    token = new_token()
    assert hash_token(token) == hashlib.sha256(token.encode()).hexdigest()
    assert token not in hash_token(token)


def test_hash_comparison_tells_equal_from_different() -> None:
    h = hash_token("epm_abc")
    assert hashes_match(h, hash_token("epm_abc"))
    assert not hashes_match(h, hash_token("epm_abd"))


def test_bootstrap_token_id_is_derived_from_the_hash() -> None:
    h = hash_token("epm_bootstrap-secret")
    assert bootstrap_token_id(h) == f"tok-boot-{h[:12]}"
    assert bootstrap_token_id(h) == bootstrap_token_id(hash_token("epm_bootstrap-secret"))


def test_global_tenant_id_is_reserved() -> None:
    with pytest.raises(InvalidId, match="reserved"):
        validate_new_tenant_id(GLOBAL_TENANT)


@pytest.mark.parametrize("bad", ["", "Acme", "-acme", "acme.corp", "a*", "a" * 64, "ac me"])
def test_bad_tenant_ids_are_refused_with_the_rule(bad: str) -> None:
    with pytest.raises(InvalidId, match="lowercase letters, digits"):
        validate_new_tenant_id(bad)


def test_msp_wide_tokens_live_under_the_global_tenant() -> None:
    assert event_tenant(None) == GLOBAL_TENANT
    assert event_tenant("acme") == "acme"


@pytest.mark.parametrize(
    ("role", "said"),
    [
        ("integrator", "an integrator"),
        ("msp_admin", "an msp_admin"),
        ("msp_technician", "an msp_technician"),
        ("tenant_admin", "a tenant_admin"),
        ("tenant_technician", "a tenant_technician"),
    ],
)
def test_roles_in_messages_take_the_article_their_sound_needs(role: str, said: str) -> None:
    assert a_role(role) == said
