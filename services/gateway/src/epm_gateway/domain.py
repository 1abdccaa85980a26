"""The gateway's domain: roles, what they may do, tokens. Plain Python, no I/O.

Walls between tenants are answered the same way everywhere: a resource of
another tenant is *hidden* (HTTP 404, its name does not leak); an action a
role may not take on something it can see is *forbidden* (HTTP 403).
"""

from __future__ import annotations

import hmac
import secrets
from enum import Enum
from typing import Literal, get_args

from epm_events.ids import GLOBAL_TENANT, InvalidId, validate_tenant
from epm_service.principal import MSP_ROLES, Principal, Role
from epm_service.secretbox import secret_hash

# --- the role table of API.md ----------------------------------------------

Action = Literal[
    "tenants.create",
    "tenants.read",
    "tokens.issue",
    "tokens.revoke",
    "enrollment_tokens.create",
    "devices.read",
    "devices.revoke",
    "offline_policy.read",
    "offline_policy.write",
    "offline.respond",
    "offline.codes",
    "channels.read",
    "channels.write",
    "rules.read",
    "rules.write",
    "requests.read",
    "decisions.once",
    "decisions.tenant",
    "decisions.global",
    "audit.read",
    "events.read",
]

_TECHNICIAN: frozenset[Action] = frozenset(
    {
        "tenants.read",
        "devices.read",
        "requests.read",
        "decisions.once",
        "decisions.tenant",
        "offline.respond",
        "offline.codes",
        "rules.read",
        "audit.read",
    }
)

PERMISSIONS: dict[Role, frozenset[Action]] = {
    # everything, every tenant
    "msp_admin": frozenset(get_args(Action)),
    # requests, decisions (any scope), rules, offline tools, audit: every tenant
    "msp_technician": _TECHNICIAN | {"decisions.global", "rules.write", "events.read"},
    # in its tenant: tokens for tenant roles, enrollment tokens, devices, offline
    # policy, channels, rules, decisions, audit
    "tenant_admin": _TECHNICIAN
    | {
        "tokens.issue",
        "tokens.revoke",
        "enrollment_tokens.create",
        "devices.revoke",
        "offline_policy.read",
        "offline_policy.write",
        "channels.read",
        "channels.write",
        "rules.write",
        "events.read",
    },
    # in its tenant: requests, decisions (once, tenant), offline response and codes, audit
    "tenant_technician": _TECHNICIAN,
    # read-only: events and audit of one tenant, or of all
    "integrator": frozenset({"tenants.read", "events.read", "audit.read"}),
}
"""Role -> the actions it may take, within the tenants it sees (Principal.sees_tenant)."""

TENANT_ROLES: frozenset[Role] = frozenset({"tenant_admin", "tenant_technician", "integrator"})
"""Roles a tenant_admin may hand out, always inside its own tenant."""


class Verdict(Enum):
    ALLOW = "allow"
    FORBIDDEN = "forbidden"  # 403: visible, but not yours to do
    HIDDEN = "hidden"  # 404: another tenant's; do not even confirm it exists


def authorize(principal: Principal, action: Action, tenant: str | None) -> Verdict:
    """May ``principal`` take ``action`` on something of ``tenant`` (None: MSP-wide)?"""
    if tenant is not None and tenant != GLOBAL_TENANT and not principal.sees_tenant(tenant):
        return Verdict.HIDDEN
    if (tenant is None or tenant == GLOBAL_TENANT) and principal.tenant is not None:
        return Verdict.FORBIDDEN
    if action not in PERMISSIONS[principal.role]:
        return Verdict.FORBIDDEN
    return Verdict.ALLOW


# --- issuing tokens ---------------------------------------------------------


def token_scope_problem(role: Role, tenant: str | None) -> str | None:
    """Why a token of ``role`` cannot be scoped to ``tenant``, or None if it can."""
    if role in MSP_ROLES and tenant is not None:
        return f"role {role} is MSP-wide: leave out 'tenant'"
    if role in ("tenant_admin", "tenant_technician") and tenant is None:
        return f"role {role} belongs to one tenant: set 'tenant' to its id"
    return None


def authorize_issue(principal: Principal, role: Role, tenant: str | None) -> Verdict:
    """Only msp_admin issues any role; a tenant_admin issues tenant roles in its own tenant."""
    verdict = authorize(principal, "tokens.issue", tenant)
    if verdict is not Verdict.ALLOW:
        return verdict
    if principal.role != "msp_admin" and role not in TENANT_ROLES:
        return Verdict.FORBIDDEN
    return Verdict.ALLOW


def authorize_revoke(principal: Principal, token_id: str, token_tenant: str | None) -> Verdict:
    """Anyone may revoke their own token (sign out); otherwise as for issuing."""
    if token_id == principal.token_id:
        return Verdict.ALLOW
    if token_tenant is None and principal.tenant is not None:
        return Verdict.HIDDEN  # MSP tokens are not a tenant's business, not even their ids
    return authorize(principal, "tokens.revoke", token_tenant)


# --- tenants ----------------------------------------------------------------


def validate_new_tenant_id(tenant: str) -> str:
    """A tenant id that may be created: subject-safe and not the reserved ``_global``."""
    if tenant == GLOBAL_TENANT:
        raise InvalidId(
            f"tenant id {GLOBAL_TENANT!r} is reserved for MSP-wide events: choose another id"
        )
    return validate_tenant(tenant, allow_global=False)


def event_tenant(tenant: str | None) -> str:
    """The tenant whose subjects carry an aggregate: its own, or ``_global`` when MSP-wide."""
    return GLOBAL_TENANT if tenant is None else tenant


# --- tokens -----------------------------------------------------------------

TOKEN_PREFIX = "epm_"


def new_token() -> str:
    """A bearer token: shown once, never stored; only its hash is."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


hash_token = secret_hash


def looks_like_token(value: str) -> bool:
    """Cheap sanity check before any lookup (the bootstrap token may lack the prefix)."""
    return 16 <= len(value) <= 512 and value.isprintable() and " " not in value


def hashes_match(stored: str, presented: str) -> bool:
    """Constant time, so response timing says nothing about a stored hash."""
    return hmac.compare_digest(stored.encode(), presented.encode())


def bootstrap_token_id(token_hash: str) -> str:
    """The same bootstrap token gives the same id on every replica and every restart."""
    return f"tok-boot-{token_hash[:12]}"
