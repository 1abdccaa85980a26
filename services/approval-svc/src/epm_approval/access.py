"""Who may do what in approval-svc (API.md's role table). Pure: raises, never reads.

Order of checks everywhere: first whether the principal may see the tenant at
all (404, so another tenant's names never leak), then whether its role may do
the action (403).
"""

from __future__ import annotations

from epm_events.ids import GLOBAL_TENANT
from epm_service.errors import Forbidden, NotFound
from epm_service.principal import Principal

TENANT_DECISION_SCOPES = frozenset({"once", "tenant"})
TENANT_RULE_WRITERS = frozenset({"msp_admin", "msp_technician", "tenant_admin"})


def require_visible(principal: Principal, tenant: str, what: str) -> None:
    """404 for a resource of a tenant the principal does not see."""
    if tenant != GLOBAL_TENANT and not principal.sees_tenant(tenant):
        raise NotFound(f"{what} not found; check the id (it may belong to another tenant)")


def require_decider(principal: Principal, scope: str) -> None:
    if principal.role == "integrator":
        raise Forbidden("integrator tokens are read-only; decisions need a technician token")
    if scope == "global" and not principal.is_msp:
        raise Forbidden(
            "only MSP technicians and admins may decide for all customers; "
            "choose scope 'once' or 'tenant'"
        )
    if not principal.is_msp and scope not in TENANT_DECISION_SCOPES:
        raise Forbidden(f"scope {scope!r} is not allowed for role {principal.role}")


def require_rule_reader(principal: Principal) -> None:
    if principal.role == "integrator":
        raise Forbidden("integrator tokens may read events and audit records only, not rules")


def may_write_rules(principal: Principal) -> bool:
    """Whether the principal may write rules of its own scope (so, edit a decision's)."""
    return principal.role in TENANT_RULE_WRITERS


def require_rule_writer(principal: Principal, tenant: str) -> None:
    """Tenant rules: tenant admins and MSP roles; global rules: MSP roles only."""
    if tenant == GLOBAL_TENANT:
        if not principal.is_msp:
            raise Forbidden("only MSP technicians and admins may change rules for all customers")
    elif principal.role not in TENANT_RULE_WRITERS:
        raise Forbidden(
            f"role {principal.role} may not change rules; ask a tenant admin or the MSP "
            "(technicians create tenant rules by deciding a request with scope 'tenant')"
        )


# --- offline access (API.md: policy is an admin's; responses and codes a technician's) ---------

OFFLINE_POLICY_WRITERS = frozenset({"msp_admin", "tenant_admin"})
OFFLINE_ISSUERS = frozenset({"msp_admin", "msp_technician", "tenant_admin", "tenant_technician"})
DEVICE_KEY_ADMINS = frozenset({"msp_admin", "msp_technician", "tenant_admin"})


def require_policy_reader(principal: Principal) -> None:
    if principal.role not in OFFLINE_ISSUERS:
        raise Forbidden("integrator tokens may read events and audit records only")


def require_policy_writer(principal: Principal) -> None:
    if principal.role not in OFFLINE_POLICY_WRITERS:
        raise Forbidden(
            f"role {principal.role} may read the offline policy but not change it; "
            "ask a tenant admin or the MSP admin"
        )


def require_offline_issuer(principal: Principal) -> None:
    if principal.role not in OFFLINE_ISSUERS:
        raise Forbidden("offline response and access codes need a technician or admin token")


def require_lockout_lifter(principal: Principal) -> None:
    """Lifting a device's offline-code lockout is the help desk's, as responses and codes are."""
    if principal.role not in OFFLINE_ISSUERS:
        raise Forbidden(
            f"role {principal.role} may not lift a device's lockout; "
            "it needs a technician or admin token"
        )


def require_device_key_admin(principal: Principal) -> None:
    if principal.role not in DEVICE_KEY_ADMINS:
        raise Forbidden(
            f"role {principal.role} may not rotate device keys or revoke codes; "
            "ask a tenant admin or an MSP technician"
        )
