"""HTTP routes of the audit trail, forwarded to audit-svc (the owner).

An export is streamed: the gateway asks audit-svc for one page after another
(each well under the NATS payload limit) and writes each to the client as it
comes, so a million records never sit in memory. The first page is fetched
before the response starts, so a refusal (another tenant: 404) is an ordinary
problem answer rather than a broken stream.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

from epm_service.principal import Principal
from epm_service.rpc import call
from epm_service.runtime import RunningService
from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from epm_gateway.api import Caller, Service
from epm_gateway.elevation import forward

AUDIT = "audit-svc"
VERIFY_TIMEOUT = 600.0
"""Verifying recomputes every hash of the trail: minutes for tens of millions of records."""
NDJSON = "application/x-ndjson"

router = APIRouter(tags=["audit"])

TenantQuery = Annotated[
    str | None,
    Query(description="one tenant's chain ('_global': the MSP chain); default: all you may see"),
]


@router.get("/v1/audit", response_model_exclude_none=True)
async def audit_records(
    who: Caller,
    svc: Service,
    tenant: TenantQuery = None,
    type: Annotated[str | None, Query(description="event name, e.g. Approved")] = None,
    device: Annotated[str | None, Query(description="device id")] = None,
    user: Annotated[str | None, Query(description="the endpoint user")] = None,
    request: Annotated[str | None, Query(description="request id")] = None,
    since: Annotated[datetime | None, Query(description="received at or after (RFC 3339)")] = None,
    until: Annotated[datetime | None, Query(description="received before (RFC 3339)")] = None,
    cursor: Annotated[str | None, Query(description="next_cursor of the last page")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    """Audit records in stream order: the event as stored, its actor, the time received and,
    for offline records, the device time. A page may hold fewer than ``limit`` records and
    still have a ``next_cursor`` (a sparse filter answers after a bounded scan)."""
    args: dict[str, Any] = {
        "tenant": tenant,
        "type": type,
        "device": device,
        "user": user,
        "request": request,
        "since": since.isoformat() if since else None,
        "until": until.isoformat() if until else None,
        "cursor": cursor,
        "limit": limit,
    }
    return await forward(svc, AUDIT, "list", {k: v for k, v in args.items() if v is not None}, who)


@router.get(
    "/v1/audit/export",
    response_class=StreamingResponse,
    responses={200: {"content": {NDJSON: {}}, "description": "one audit record a line"}},
)
async def audit_export(who: Caller, svc: Service, tenant: TenantQuery = None) -> StreamingResponse:
    """Every record (of one tenant, or of all you may see) as NDJSON, in stream order, up to
    the end of the trail when the export began: each chain in it is complete from its first
    record, so ``epm audit verify --file`` checks it offline with the keys of /v1/audit/keys."""
    args: dict[str, Any] = {"tenant": tenant} if tenant else {}
    first = await forward(svc, AUDIT, "export_page", args, who)
    return StreamingResponse(pages(svc, who, args, first), media_type=NDJSON)


async def pages(
    svc: RunningService, who: Principal, args: dict[str, Any], page: dict[str, Any]
) -> AsyncIterator[bytes]:
    while True:
        yield base64.b64decode(page["ndjson_base64"])
        if page.get("next_after") is None:
            return
        more = {**args, "after": page["next_after"], "through": page["through"]}
        page = await forward(svc, AUDIT, "export_page", more, who)


@router.get("/v1/audit/verify")
async def audit_verify(who: Caller, svc: Service, tenant: TenantQuery = None) -> dict[str, Any]:
    """Recompute the chains and check every checkpoint signature: ``{"ok", "records", "head",
    "first_bad"?}`` (``first_bad``: stream sequence of the first record that fails, with
    ``problem``)."""
    args: dict[str, Any] = {"tenant": tenant} if tenant else {}
    result: dict[str, Any] = await call(
        svc.ctx.bus.nc, AUDIT, "verify", args, who, timeout=VERIFY_TIMEOUT
    )
    return result


@router.get("/v1/audit/keys")
async def audit_keys(who: Caller, svc: Service) -> dict[str, Any]:
    """The public halves of the Ed25519 keys that sign audit checkpoints (raw 32 bytes,
    base64), so an auditor verifies an export without trusting this server."""
    return await forward(svc, AUDIT, "keys", {}, who)
