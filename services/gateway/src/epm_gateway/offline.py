"""HTTP routes of offline access: the tenant's offline policy, help-desk response codes,
offline access codes, device key rotation, lifting a device's lockout. All forwarded to approval-svc, which
authorizes (404 across tenants, 403 within) and checks the policy.
"""

from __future__ import annotations

from typing import Any, Literal

from epm_events.catalog import OfflinePolicy
from fastapi import APIRouter
from pydantic import BaseModel, Field

from epm_gateway.api import Caller, Service
from epm_gateway.elevation import APPROVALS, forward

router = APIRouter(tags=["offline"])

REFUSALS: dict[int | str, dict[str, Any]] = {
    403: {"description": "the role, or the tenant's offline policy, does not allow it"},
    404: {"description": "no such tenant or device (or not yours)"},
    409: {"description": "the device is revoked, or has no offline key material"},
}


class OfflineResponseIn(BaseModel):
    request_code: str = Field(description="the 6 digits the computer shows", max_length=20)
    grant: Literal["app", "admin"]
    sha256: str | None = Field(
        default=None,
        max_length=64,
        description="app grants: the application's SHA-256 (without it: any application, "
        "only where the policy has response_any_app)",
    )
    minutes: int | None = Field(
        default=None, ge=1, le=24 * 60, description="admin grants: full admin for (minutes)"
    )


class OfflineCodesIn(BaseModel):
    purpose: Literal["app", "admin"]
    count: int = Field(default=1, ge=1, le=50)
    sha256: str | None = Field(
        default=None, max_length=64, description="app codes: pin to one application"
    )
    minutes: int | None = Field(
        default=None,
        ge=1,
        le=24 * 60,
        description="admin codes: 15, 30, 60, 120, 240, 480, 720 or 1440",
    )
    expires_in: int | None = Field(
        default=None,
        ge=60,
        le=31 * 86400,
        description="seconds (default 7 days); a code is valid through the end of that UTC day",
    )


class LockoutLiftIn(BaseModel):
    reason: str | None = Field(
        default=None, max_length=500, description="why (kept in the audit trail)"
    )


def _args(tenant: str, device_id: str, body: BaseModel) -> dict[str, Any]:
    return {"tenant": tenant, "device_id": device_id, **body.model_dump(exclude_none=True)}


@router.get("/v1/tenants/{tenant}/offline-policy", responses=REFUSALS)
async def get_offline_policy(tenant: str, who: Caller, svc: Service) -> dict[str, Any]:
    """The tenant's offline policy (API.md's defaults until an admin sets it)."""
    return await forward(svc, APPROVALS, "get_policy", {"tenant": tenant}, who)


@router.put("/v1/tenants/{tenant}/offline-policy", responses=REFUSALS)
async def put_offline_policy(
    tenant: str, body: OfflinePolicy, who: Caller, svc: Service
) -> dict[str, Any]:
    """Replace the whole policy (tenant_admin, msp_admin); every device of the tenant gets it."""
    args = {"tenant": tenant, "policy": body.model_dump()}
    return await forward(svc, APPROVALS, "set_policy", args, who)


@router.post("/v1/tenants/{tenant}/devices/{device_id}/offline-response", responses=REFUSALS)
async def offline_response(
    tenant: str, device_id: str, body: OfflineResponseIn, who: Caller, svc: Service
) -> dict[str, Any]:
    """A response code ``XXXX-XXXX-XXXX`` for the request code the computer shows."""
    return await forward(svc, APPROVALS, "offline_response", _args(tenant, device_id, body), who)


@router.post(
    "/v1/tenants/{tenant}/devices/{device_id}/offline-codes", status_code=201, responses=REFUSALS
)
async def offline_codes(
    tenant: str, device_id: str, body: OfflineCodesIn, who: Caller, svc: Service
) -> dict[str, Any]:
    """One-time offline access codes for one device, shown once (only their hashes are kept)."""
    return await forward(svc, APPROVALS, "offline_codes", _args(tenant, device_id, body), who)


@router.delete("/v1/tenants/{tenant}/devices/{device_id}/offline-codes", responses=REFUSALS)
async def revoke_offline_codes(
    tenant: str, device_id: str, who: Caller, svc: Service
) -> dict[str, Any]:
    """Void every unused code of the device (a new key version, sent to the device)."""
    args = {"tenant": tenant, "device_id": device_id}
    return await forward(svc, APPROVALS, "revoke_device_codes", args, who)


@router.post("/v1/tenants/{tenant}/devices/{device_id}/offline-key/rotate", responses=REFUSALS)
async def rotate_offline_key(
    tenant: str, device_id: str, who: Caller, svc: Service
) -> dict[str, Any]:
    """Rotate the device's offline key: codes of older versions stop working."""
    args = {"tenant": tenant, "device_id": device_id}
    return await forward(svc, APPROVALS, "rotate_device_key", args, who)


@router.post("/v1/tenants/{tenant}/devices/{device_id}/lockout-lift", responses=REFUSALS)
async def lift_lockout(
    tenant: str,
    device_id: str,
    who: Caller,
    svc: Service,
    body: LockoutLiftIn | None = None,
) -> dict[str, Any]:
    """End the computer's lockout after wrong offline codes (OfflineLockoutLifted); it takes
    effect when the computer is next online (epm-agent status, request or sync)."""
    args = _args(tenant, device_id, body or LockoutLiftIn())
    return await forward(svc, APPROVALS, "lift_lockout", args, who)
