"""The gateway's commands, answered over NATS request/reply (``epm.rpc.gateway.<command>``).

Whichever replica answers, it decides from the stream, not from memory: new
aggregates are appended with expected sequence 0 (so a second create is a
conflict), changes with the aggregate's last sequence.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from epm_events.catalog import TenantCreated, TokenIssued, TokenRevoked
from epm_events.ids import new_id, validate_tenant, validate_token
from epm_events.streams import EVENTS
from epm_service.errors import CommandError, Conflict, Forbidden, Invalid, NotFound, Unavailable
from epm_service.principal import Principal, Role, a_role
from epm_service.projection import Projector
from epm_service.publisher import ConcurrencyConflict
from epm_service.rpc import CommandHandler, call
from epm_service.runtime import ServiceContext
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from epm_gateway.directory import (
    Directory,
    TokenRecord,
    read_caught_up,
    tenant_by_id,
    token_by_id,
)
from epm_gateway.domain import (
    TENANT_ROLES,
    Verdict,
    authorize,
    authorize_issue,
    authorize_revoke,
    event_tenant,
    hash_token,
    new_token,
    token_scope_problem,
    validate_new_tenant_id,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


# --- arguments ----------------------------------------------------------------


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CreateTenant(Args):
    id: str
    name: str = Field(min_length=1, max_length=200)


class IssueToken(Args):
    role: Role
    name: str = Field(min_length=1, max_length=200)
    tenant: str | None = None
    # The HTTP edge mints the token itself and sends only its hash, so the secret
    # never crosses the bus; without it the command mints one and returns it once.
    token_hash: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class RevokeToken(Args):
    id: str


def parse(model: type[M], args: dict[str, Any]) -> M:
    try:
        return model.model_validate(args)
    except ValidationError as exc:
        detail = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(arguments)'}: {e['msg']}"
            for e in exc.errors()
        )
        raise Invalid(detail) from None


# --- verdicts to answers --------------------------------------------------------


def enforce(verdict: Verdict, *, forbidden: str, hidden: str) -> None:
    if verdict is Verdict.HIDDEN:
        raise NotFound(hidden)
    if verdict is Verdict.FORBIDDEN:
        raise Forbidden(forbidden)


def directory(ctx: ServiceContext) -> Projector:
    return ctx.projector(Directory.name)


async def read_fresh(ctx: ServiceContext, query: Callable[[Any], T | None]) -> T | None:
    return await read_caught_up(directory(ctx), ctx.bus.js, query)


# --- handlers -------------------------------------------------------------------


async def create_tenant(
    ctx: ServiceContext, args: dict[str, Any], principal: Principal
) -> dict[str, Any]:
    cmd = parse(CreateTenant, args)
    enforce(
        authorize(principal, "tenants.create", None),
        forbidden="only an msp_admin creates tenants; ask your MSP administrator",
        hidden="not found",
    )
    tenant = validate_new_tenant_id(cmd.id)
    event = TenantCreated(tenant_id=tenant, name=cmd.name, created_by=principal.actor)
    try:
        [appended] = await ctx.publisher.append(tenant, [event], expected_last_seq=0)
    except ConcurrencyConflict:
        raise Conflict(f"tenant {tenant!r} exists already; choose another id") from None
    log.info(
        "tenant created",
        extra={"tenant": tenant, "event_id": appended.envelope.id, "by": principal.token_id},
    )
    return {"id": tenant, "name": cmd.name, "seq": appended.seq}


async def issue_token(
    ctx: ServiceContext, args: dict[str, Any], principal: Principal
) -> dict[str, Any]:
    cmd = parse(IssueToken, args)
    tenant = cmd.tenant
    if tenant is None and principal.tenant is not None and cmd.role in TENANT_ROLES:
        tenant = principal.tenant  # a tenant admin issues within its own tenant by default
    if tenant is not None:
        validate_tenant(tenant, allow_global=False)
    hidden = f"tenant {tenant!r} not found; check the id (GET /v1/tenants lists yours)"
    enforce(
        authorize_issue(principal, cmd.role, tenant),
        forbidden=(
            f"{a_role(principal.role)} may not issue {a_role(cmd.role)} token here: a tenant_admin"
            " issues"
            " tenant_admin, tenant_technician and integrator tokens of its own tenant;"
            " an msp_admin issues any token"
        ),
        hidden=hidden,
    )
    problem = token_scope_problem(cmd.role, tenant)
    if problem:
        raise Invalid(problem)
    if tenant is not None and await read_fresh(ctx, lambda c: tenant_by_id(c, tenant)) is None:
        raise NotFound(hidden + "; an msp_admin creates tenants with POST /v1/tenants")

    token = None if cmd.token_hash else new_token()
    token_hash = cmd.token_hash or hash_token(token or "")
    token_id = new_id("tok")
    event = TokenIssued(
        token_id=token_id,
        name=cmd.name,
        role=cmd.role,
        tenant_id=tenant,
        token_hash=token_hash,
        issued_by=principal.actor,
    )
    [appended] = await ctx.publisher.append(event_tenant(tenant), [event], expected_last_seq=0)
    log.info(
        "token issued",
        extra={
            "tenant": tenant,
            "token_id": token_id,
            "role": cmd.role,
            "event_id": appended.envelope.id,
            "by": principal.token_id,
        },
    )
    result: dict[str, Any] = {
        "id": token_id,
        "name": cmd.name,
        "role": cmd.role,
        "tenant": tenant,
        "seq": appended.seq,
    }
    if token is not None:
        result["token"] = token
    return result


async def revoke_token(
    ctx: ServiceContext, args: dict[str, Any], principal: Principal
) -> dict[str, Any]:
    token_id = validate_token(parse(RevokeToken, args).id, "token id")
    missing = f"token {token_id!r} not found; check the id (it is the 'id' returned on issue)"

    def lookup(c: Any) -> TokenRecord | None:
        return token_by_id(c, token_id)

    record = await read_fresh(ctx, lookup)
    if record is None:
        raise NotFound(missing)
    enforce(
        authorize_revoke(principal, record.id, record.tenant),
        forbidden=f"{a_role(principal.role)} may not revoke other tokens; ask a tenant_admin",
        hidden=missing,
    )
    for _ in range(3):
        if record.revoked:
            await revoke_nats_user(ctx, record, record.last_seq, principal)  # again: it may
            return {"id": token_id, "revoked": True, "seq": record.last_seq}  # have failed
        event = TokenRevoked(token_id=token_id, revoked_by=principal.actor)
        try:
            [appended] = await ctx.publisher.append(
                event_tenant(record.tenant), [event], expected_last_seq=record.last_seq
            )
        except ConcurrencyConflict:
            # someone changed the token meanwhile (probably revoked it too): look again
            info = await ctx.bus.js.stream_info(EVENTS.name)
            await directory(ctx).wait_for(info.state.last_seq, timeout=5)
            record = await directory(ctx).read(lookup)
            if record is None:
                raise NotFound(missing) from None
            continue
        log.info(
            "token revoked",
            extra={
                "tenant": record.tenant,
                "token_id": token_id,
                "event_id": appended.envelope.id,
                "by": principal.token_id,
            },
        )
        await revoke_nats_user(ctx, record, appended.seq, principal)
        return {"id": token_id, "revoked": True, "seq": appended.seq}
    raise Conflict(f"token {token_id!r} keeps changing; try again")


NATS_REVOKE_TIMEOUT = 15.0
"""request-svc may wait for its projection (5 s) and then for the resolver (5 s a request)."""


async def revoke_nats_user(
    ctx: ServiceContext, record: TokenRecord, seq: int, principal: Principal
) -> None:
    """An integrator token's NATS user (``GET /v1/integrations/nats``) goes with the token, at
    once: request-svc, which holds the operator signing key, pushes the revocation once its
    projection has the TokenRevoked at ``seq``. If it cannot now, it does at its next resync
    (30 s); the token itself is revoked either way."""
    if record.role != "integrator" or not ctx.settings.nats_issuer:
        return  # no NATS creds were ever issued for it
    args = {"token_id": record.id, "seq": seq}
    try:
        await call(
            ctx.bus.nc,
            "request-svc",
            "revoke_integrator_nats",
            args,
            principal,
            timeout=NATS_REVOKE_TIMEOUT,
        )
    except CommandError as exc:
        raise Unavailable(
            f"the token is revoked (it is refused from now on), but its NATS credentials are "
            f"not revoked yet: {exc.detail}. request-svc revokes them within 30 s of running "
            "again; or revoke the token again"
        ) from None


# --- the table --------------------------------------------------------------------

Command = Callable[[ServiceContext, dict[str, Any], Principal], Awaitable[Any]]

COMMANDS: dict[str, Command] = {
    "create_tenant": create_tenant,
    "issue_token": issue_token,
    "revoke_token": revoke_token,
}
"""Every command the gateway answers, by name (``epm.rpc.gateway.<name>``)."""


def command_handlers(ctx: ServiceContext) -> Mapping[str, CommandHandler]:
    return {name: functools.partial(fn, ctx) for name, fn in COMMANDS.items()}
