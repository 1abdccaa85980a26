"""HTTP routes of the main path: enrollment, devices, requests, decisions, rules.

The gateway owns none of these: every route authenticates, then forwards to
the owning service over NATS (request-svc or approval-svc), which authorizes
with the principal it is given (404 across tenants, 403 within).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from epm_events.catalog import RuleMatch
from epm_service.principal import Principal
from epm_service.rpc import call
from epm_service.runtime import RunningService
from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from epm_gateway.api import Caller, Service

REQUESTS = "request-svc"
APPROVALS = "approval-svc"

# Enrollment is authenticated by the one-time enrollment token itself.
AGENT_ENROLLMENT = Principal(token_id="enrollment", name="agent", role="integrator", tenant=None)

router = APIRouter()
StatusFilter = Literal["open", "approved", "denied", "expired", "all"]


async def forward(
    svc: RunningService, service: str, command: str, args: dict[str, Any], who: Principal
) -> dict[str, Any]:
    result: dict[str, Any] = await call(svc.ctx.bus.nc, service, command, args, who)
    return result


# --- bodies -------------------------------------------------------------------------


class EnrollmentTokenIn(BaseModel):
    ttl_seconds: int | None = Field(
        default=None, ge=60, le=90 * 86400, description="lifetime of the token (default 7 days)"
    )


class EnrollIn(BaseModel):
    enrollment_token: str = Field(min_length=1, max_length=200)
    public_key: str = Field(description="the device's raw 32-byte Ed25519 public key, base64")
    hostname: str = Field(min_length=1, max_length=255)
    encryption_key: str | None = Field(
        default=None,
        description="the device's raw 32-byte X25519 public key, base64: offline key material"
        " is sealed to it (without it, key_material is null)",
    )


class DecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not ignored

    decision: Literal["approve", "deny"]
    scope: Literal["once", "tenant", "global"]
    rule_name: str | None = Field(default=None, max_length=200)
    rule: RuleMatch | None = Field(default=None, description="overrides the pre-filled match")
    reason: str | None = Field(default=None, max_length=2000)


class RuleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    effect: Literal["allow", "deny"]
    match: RuleMatch

    @model_validator(mode="before")
    @classmethod
    def _where_from_the_path(cls, data: Any) -> Any:
        """A rule's tenant and scope come from the path it is posted to: ignoring them in
        the body would turn a rule meant for one customer into one for all."""
        if isinstance(data, dict) and ({"tenant", "scope"} & data.keys()):
            raise ValueError(
                "a rule's tenant and scope come from the path: POST /v1/tenants/{tenant}/rules "
                "for a tenant's rule, POST /v1/rules for all customers; leave 'tenant' and "
                "'scope' out of the body"
            )
        return data


# --- paging (devices, rules, notification channels) --------------------------------------

PageCursor = Annotated[str | None, Query(description="next_cursor of the previous page")]
PageLimit = Annotated[int, Query(ge=1, le=500, description="items per page")]


def page(cursor: str | None, limit: int) -> dict[str, Any]:
    """A list command's paging arguments (no cursor: from the beginning)."""
    return {"limit": limit, **({"cursor": cursor} if cursor else {})}


# --- enrollment and devices -----------------------------------------------------------


@router.post("/v1/tenants/{tenant}/enrollment-tokens", status_code=201, tags=["devices"])
async def create_enrollment_token(
    tenant: str, who: Caller, svc: Service, body: EnrollmentTokenIn | None = None
) -> dict[str, Any]:
    """A one-time token for enrolling one device (shown once)."""
    args = {"tenant": tenant, "ttl_seconds": body.ttl_seconds if body else None}
    return await forward(svc, REQUESTS, "create_enrollment_token", args, who)


@router.post("/v1/agent/enroll", status_code=201, tags=["agents"])
async def enroll(body: EnrollIn, svc: Service) -> dict[str, Any]:
    """Enroll a device with a one-time enrollment token (no bearer token needed)."""
    return await forward(svc, REQUESTS, "enroll", body.model_dump(), AGENT_ENROLLMENT)


@router.get("/v1/tenants/{tenant}/devices", tags=["devices"])
async def list_devices(
    tenant: str,
    who: Caller,
    svc: Service,
    offline: Annotated[
        Literal["open"] | None,
        Query(description="'open': only computers with any open request"),
    ] = None,
    cursor: PageCursor = None,
    limit: PageLimit = 100,
) -> dict[str, Any]:
    """The tenant's computers, a page at a time (``next_cursor`` while there may be more):
    those with any open request first, revoked ones last, then by hostname."""
    args = {"tenant": tenant, "offline_open": offline == "open", **page(cursor, limit)}
    return await forward(svc, REQUESTS, "list_devices", args, who)


@router.delete("/v1/tenants/{tenant}/devices/{device_id}", status_code=204, tags=["devices"])
async def revoke_device(tenant: str, device_id: str, who: Caller, svc: Service) -> Response:
    """Revoke a device: its messages are refused from now on (DeviceRevoked)."""
    await forward(svc, REQUESTS, "revoke_device", {"tenant": tenant, "device_id": device_id}, who)
    return Response(status_code=204)


# --- requests ---------------------------------------------------------------------------


@router.get("/v1/tenants/{tenant}/requests", tags=["requests"])
async def tenant_requests(
    tenant: str,
    who: Caller,
    svc: Service,
    status: StatusFilter = "open",
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 100,
) -> dict[str, Any]:
    """The local view: one tenant's requests (open by default)."""
    args = {"tenant": tenant, "status": status, "cursor": cursor, "limit": limit}
    return await forward(svc, REQUESTS, "list_requests", args, who)


@router.get("/v1/requests", tags=["requests"])
async def all_requests(
    who: Caller,
    svc: Service,
    status: StatusFilter = "open",
    tenant: str | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 100,
) -> dict[str, Any]:
    """The global view (MSP): every tenant's requests; a tenant's principal sees its own."""
    args = {"tenant": tenant, "status": status, "cursor": cursor, "limit": limit}
    return await forward(svc, REQUESTS, "list_requests", args, who)


@router.get("/v1/requests/{request_id}", tags=["requests"])
async def get_request(request_id: str, who: Caller, svc: Service) -> dict[str, Any]:
    """One request with its history."""
    return await forward(svc, REQUESTS, "get_request", {"request_id": request_id}, who)


@router.get("/v1/requests/{request_id}/rule-draft", tags=["requests"])
async def rule_draft(request_id: str, who: Caller, svc: Service) -> dict[str, Any]:
    """A rule pre-filled from the request (SHA-256, publisher, application name)."""
    return await forward(svc, APPROVALS, "rule_draft", {"request_id": request_id}, who)


@router.post(
    "/v1/requests/{request_id}/decision",
    tags=["requests"],
    responses={409: {"description": "already decided or expired"}},
)
async def decide(request_id: str, body: DecisionIn, who: Caller, svc: Service) -> dict[str, Any]:
    """Approve or deny once, for the tenant (a rule) or for all customers (a global rule)."""
    args = {"request_id": request_id, **body.model_dump(mode="json", exclude_none=True)}
    return await forward(svc, APPROVALS, "decide", args, who)


# --- rules ------------------------------------------------------------------------------


@router.get("/v1/tenants/{tenant}/rules", tags=["rules"])
async def tenant_rules(
    tenant: str, who: Caller, svc: Service, cursor: PageCursor = None, limit: PageLimit = 100
) -> dict[str, Any]:
    """A tenant's rules, a page at a time (``next_cursor`` while there are more)."""
    args = {"tenant": tenant, **page(cursor, limit)}
    return await forward(svc, APPROVALS, "list_rules", args, who)


@router.post("/v1/tenants/{tenant}/rules", status_code=201, tags=["rules"])
async def create_tenant_rule(
    tenant: str, body: RuleIn, who: Caller, svc: Service
) -> dict[str, Any]:
    args = {"tenant": tenant, **body.model_dump(mode="json", exclude_none=True)}
    return await forward(svc, APPROVALS, "create_rule", args, who)


@router.get("/v1/rules", tags=["rules"])
async def global_rules(
    who: Caller, svc: Service, cursor: PageCursor = None, limit: PageLimit = 100
) -> dict[str, Any]:
    """The rules for all customers, a page at a time (``next_cursor`` while there are more)."""
    return await forward(svc, APPROVALS, "list_rules", page(cursor, limit), who)


@router.post("/v1/rules", status_code=201, tags=["rules"])
async def create_global_rule(body: RuleIn, who: Caller, svc: Service) -> dict[str, Any]:
    return await forward(
        svc, APPROVALS, "create_rule", body.model_dump(mode="json", exclude_none=True), who
    )


@router.delete("/v1/rules/{rule_id}", status_code=204, tags=["rules"])
async def disable_rule(rule_id: str, who: Caller, svc: Service) -> Response:
    """Disable a rule (RuleDisabled; its history is kept)."""
    await forward(svc, APPROVALS, "disable_rule", {"rule_id": rule_id}, who)
    return Response(status_code=204)
