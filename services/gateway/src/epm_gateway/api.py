"""The HTTP edge: authentication, tenant scoping and the REST API (``/v1``).

Routes are thin: reads come from the gateway's own projection, commands go
over NATS request/reply to the owning service (the gateway itself for
tenants and tokens, so every replica behaves the same), and after a command
the route waits for its projection to reach the appended sequence, so a GET
right after a POST sees the result.
"""

from __future__ import annotations

import base64
import logging
import time
from typing import Annotated, Any

from epm_events.asyncapi import asyncapi_document
from epm_events.streams import ALL_STREAMS
from epm_service.errors import Forbidden, Invalid, NotFound
from epm_service.paging import FOREIGN_CURSOR
from epm_service.principal import Principal, Role
from epm_service.projection import Projector
from epm_service.rpc import call
from epm_service.runtime import RunningService
from epm_service.streams import MissingStreams, check_streams
from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from pydantic import BaseModel, Field, field_validator
from starlette.responses import Response as StarletteResponse

from epm_gateway import hardening, problems
from epm_gateway.directory import (
    Directory,
    Tenant,
    list_tenants,
    principal_by_hash,
    read_caught_up,
)
from epm_gateway.domain import Verdict, authorize, hash_token, looks_like_token, new_token
from epm_gateway.domain import validate_new_tenant_id as _validate_new_tenant_id
from epm_gateway.problems import Unauthorized

log = logging.getLogger(__name__)

SERVICE = "gateway"

HTTP_REQUESTS = Counter(
    "epm_gateway_http_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})  # probes: logged at debug

HTTP_SECONDS = Histogram("epm_gateway_http_seconds", "HTTP request time", ["method", "route"])

# --- bodies ---------------------------------------------------------------------


class TenantIn(BaseModel):
    id: str = Field(description="[a-z0-9][a-z0-9-]{0,62}; '_global' is reserved")
    name: str = Field(min_length=1, max_length=200)

    @field_validator("id")
    @classmethod
    def _tenant_id(cls, v: str) -> str:
        return _validate_new_tenant_id(v)


class TenantOut(BaseModel):
    id: str
    name: str


class TenantPage(BaseModel):
    items: list[TenantOut]
    next_cursor: str | None = None


class TokenIn(BaseModel):
    role: Role
    name: str = Field(min_length=1, max_length=200)
    tenant: str | None = Field(
        default=None,
        description="the tenant the token belongs to; leave out for MSP-wide roles"
        " (a tenant_admin's tokens default to its own tenant)",
    )


class TokenOut(BaseModel):
    id: str
    token: str = Field(description="shown once: store it now, it cannot be read again")
    role: Role
    name: str
    tenant: str | None = None


# --- wiring -----------------------------------------------------------------------

bearer = HTTPBearer(auto_error=False, description="an EPM token: Authorization: Bearer epm_...")


def running(request: Request) -> RunningService:
    service: RunningService = request.app.state.running
    return service


def directory_of(service: RunningService) -> Projector:
    return service.ctx.projector(Directory.name)


async def authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        from epm_gateway.session import session_principal  # the console's cookie

        if (by_cookie := await session_principal(request)) is not None:
            request.state.principal = by_cookie
            return by_cookie
        raise Unauthorized(
            "this endpoint needs a token: send 'Authorization: Bearer <token>'"
            " (epm dev writes an admin token to <data-dir>/admin-token)"
        )
    token = credentials.credentials.strip()
    principal = None
    if looks_like_token(token):
        token_hash = hash_token(token)
        service = running(request)
        principal = await read_caught_up(
            directory_of(service), service.ctx.bus.js, lambda c: principal_by_hash(c, token_hash)
        )
        if principal is not None and await hardening.revoked_in_stream(
            service.ctx.bus.js, principal
        ):
            principal = None  # revoked on another replica, not yet in our projection
    if principal is None:
        raise Unauthorized(
            "the token is unknown or revoked: ask an administrator for a new one",
            invalid_token=True,
        )
    request.state.principal = principal
    return principal


async def still_authenticated(request: Request, principal: Principal) -> bool:
    """Whether the request's credentials still stand for ``principal``, by the check every
    request gets (``authenticate``: the token revoked, on any replica; a console session
    signed out or expired). A long answer (the event stream) asks again as it goes, so
    revoking a token ends it too. Fails closed: if it cannot be confirmed, False."""
    try:
        again = await authenticate(request, await bearer(request))
    except Exception as exc:  # Unauthorized; Unavailable (NATS cannot say); anything else
        log.info(
            "credentials no longer valid",
            extra={"token_id": principal.token_id, "reason": type(exc).__name__},
        )
        return False
    return again.token_id == principal.token_id


Caller = Annotated[Principal, Depends(authenticate)]
Service = Annotated[RunningService, Depends(running)]


async def command(service: RunningService, name: str, args: dict[str, Any], who: Principal) -> Any:
    """Send a command to its owner over NATS, then wait until our projection has it."""
    result = await call(service.ctx.bus.nc, SERVICE, name, args, who)
    seq = int(result.get("seq", 0)) if isinstance(result, dict) else 0
    if seq and not await directory_of(service).wait_for(seq, timeout=5):
        log.warning("projection is behind the command just answered", extra={"seq": seq})
    return result


CURSOR_PREFIX = "after:"


def encode_cursor(last_id: str) -> str:
    return base64.urlsafe_b64encode((CURSOR_PREFIX + last_id).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        text = raw.decode()
    except (ValueError, UnicodeDecodeError):  # binascii.Error, or not even ASCII
        text = ""
    if not text.startswith(CURSOR_PREFIX):
        raise Invalid(FOREIGN_CURSOR)
    return text.removeprefix(CURSOR_PREFIX)


# --- the app ------------------------------------------------------------------------


PROXY_HEADERS = ("x-forwarded-for", "forwarded")


def not_through_a_proxy(request: Request) -> None:
    """Readiness and metrics are for the cluster (the kubelet, Prometheus at the pod), not
    for whoever reaches the gateway through the Ingress: internal figures, and a readiness
    check costs NATS look-ups. A request a proxy forwarded gets 404."""
    if any(h in request.headers for h in PROXY_HEADERS):
        raise NotFound("no such resource here; operations endpoints answer inside the cluster")


def create_app(service: RunningService) -> FastAPI:
    app = FastAPI(
        title="EPM gateway",
        version="1.0.0",
        description="Endpoint privilege management: the HTTP API. Errors are RFC 9457"
        " problem+json; events are described in /asyncapi.json.",
    )
    app.state.running = service
    problems.install(app)

    @app.middleware("http")
    async def observe(request: Request, call_next: Any) -> StarletteResponse:
        started = time.perf_counter()
        response: StarletteResponse = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        HTTP_REQUESTS.labels(request.method, route, str(response.status_code)).inc()
        HTTP_SECONDS.labels(request.method, route).observe(time.perf_counter() - started)
        principal: Principal | None = getattr(request.state, "principal", None)
        quiet = route in QUIET_ROUTES and response.status_code < 400
        log.log(
            logging.DEBUG if quiet else logging.INFO,
            "http",
            extra={
                "method": request.method,
                "route": route,
                "status": response.status_code,
                "ms": round((time.perf_counter() - started) * 1000, 2),
                "token_id": principal.token_id if principal else None,
                "tenant": principal.tenant if principal else None,
            },
        )
        return response

    # --- operations ----------------------------------------------------------------

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["operations"],
        responses={503: {"description": "not ready"}},
        dependencies=[Depends(not_through_a_proxy)],
    )
    async def readyz(svc: Service) -> JSONResponse:
        """Readiness: connected to NATS, the streams exist, projections caught up (the
        kubelet's probe; not answered through a proxy)."""
        ok, reason = svc.ready()
        if ok:
            try:
                await check_streams(svc.ctx.bus.js, tuple(s.name for s in ALL_STREAMS))
            except MissingStreams as exc:
                ok, reason = False, str(exc)
            except Exception as exc:
                ok, reason = False, f"cannot check the streams: {exc}"
        if ok:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "not ready", "reason": reason}, status_code=503)

    @app.get(
        "/metrics",
        tags=["operations"],
        response_class=Response,
        dependencies=[Depends(not_through_a_proxy)],
    )
    async def metrics() -> Response:
        """Prometheus, scraping the pod itself; not answered through a proxy."""
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/asyncapi.json", tags=["contracts"])
    async def asyncapi() -> dict[str, Any]:
        """The event contract (AsyncAPI 3), generated from the event catalog."""
        return asyncapi_document()

    # --- tenants --------------------------------------------------------------------

    @app.post("/v1/tenants", status_code=201, tags=["tenants"])
    async def create_tenant(body: TenantIn, who: Caller, svc: Service) -> TenantOut:
        """Create a customer tenant (msp_admin only). 409 if the id is taken."""
        result = await command(svc, "create_tenant", body.model_dump(), who)
        return TenantOut(id=result["id"], name=result["name"])

    @app.get("/v1/tenants", tags=["tenants"], response_model_exclude_none=True)
    async def get_tenants(
        who: Caller,
        svc: Service,
        cursor: Annotated[str | None, Query(description="next_cursor of the last page")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> TenantPage:
        """Tenants by id; a tenant's own principals see only their tenant."""
        verdict = authorize(who, "tenants.read", who.tenant)
        if verdict is not Verdict.ALLOW:
            raise Forbidden("your role may not list tenants")
        after = decode_cursor(cursor) if cursor else ""
        rows: list[Tenant] = await directory_of(svc).read(
            lambda c: list_tenants(c, after=after, limit=limit + 1, only=who.tenant)
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return TenantPage(
            items=[TenantOut(id=t.id, name=t.name) for t in rows],
            next_cursor=encode_cursor(rows[-1].id) if more else None,
        )

    # --- tokens -----------------------------------------------------------------------

    @app.post("/v1/tokens", status_code=201, tags=["tokens"])
    async def issue_token(body: TokenIn, who: Caller, svc: Service) -> TokenOut:
        """Issue a token; the token is in this answer only (only its hash is kept)."""
        token = new_token()
        args = {**body.model_dump(), "token_hash": hash_token(token)}
        result = await command(svc, "issue_token", args, who)
        return TokenOut(
            id=result["id"],
            token=token,
            role=result["role"],
            name=result["name"],
            tenant=result["tenant"],
        )

    @app.delete("/v1/tokens/{token_id}", status_code=204, tags=["tokens"])
    async def revoke_token(token_id: str, who: Caller, svc: Service) -> Response:
        """Revoke a token; it stops working at once. Revoking twice is fine. An integrator
        token's NATS credentials (``GET /v1/integrations/nats``) are revoked with it: NATS
        drops and refuses them at once (503 if NATS did not take it yet: revoke again)."""
        await command(svc, "revoke_token", {"id": token_id}, who)
        return Response(status_code=204)

    # routes forwarded to the owning services
    from epm_gateway import (
        audit,
        console,
        elevation,
        events_stream,
        integrations,
        notifications,
        offline,
        session,
    )

    app.include_router(elevation.router)
    app.include_router(offline.router)
    app.include_router(notifications.router)
    app.include_router(session.router)
    app.include_router(events_stream.router)
    app.include_router(console.router)
    app.include_router(audit.router)
    app.include_router(integrations.router)
    hardening.install(app, public_url=service.ctx.settings.public_url)  # outermost: the guard
    return app
