"""Console sessions: a token exchanged once for an HttpOnly, SameSite=Strict cookie.

The cookie is a signed session record ``{sid, token id, expiry}`` (HMAC-SHA256
under a key derived from ``EPM_MASTER_KEY``), so every gateway replica accepts
it and a restart keeps people signed in; the token itself is never in it, in a
URL or in the browser's storage. Each request re-reads the token by id, so a
revoked token ends its sessions at once.

CSRF: SameSite=Strict keeps other sites' requests from carrying the cookie,
and every unsafe cookie-authenticated request (and the sign-in itself) must
also send ``X-EPM-Console: 1``, a header no cross-site form can set and the
gateway allows through no CORS preflight.

Sign-out clears the cookie and refuses its session id on this replica from
then on; elsewhere the session ends at its expiry or when the token is revoked.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass

import orjson
from epm_service.errors import Forbidden
from epm_service.principal import Principal
from epm_service.secretbox import SecretBox
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from epm_gateway.api import directory_of, running
from epm_gateway.directory import principal_by_hash, read_caught_up, token_by_id
from epm_gateway.domain import hash_token, looks_like_token
from epm_gateway.hardening import revoked_in_stream
from epm_gateway.problems import Unauthorized

log = logging.getLogger(__name__)

router = APIRouter(tags=["session"])

COOKIE = "epm_session"
CONSOLE_HEADER = "X-EPM-Console"
SESSION_SECONDS = 12 * 3600
KEY_PURPOSE = "gateway console session v1"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class Session:
    sid: str
    token_id: str
    expires: int  # unix seconds


class SessionSigner:
    """Signs and checks session cookies; remembers this replica's signed-out sessions."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._ended: dict[str, int] = {}  # sid -> its expiry

    def issue(self, token_id: str, now: float) -> tuple[str, Session]:
        session = Session(secrets.token_urlsafe(16), token_id, int(now) + SESSION_SECONDS)
        body = _b64(orjson.dumps({"sid": session.sid, "tid": token_id, "exp": session.expires}))
        return f"{body}.{_b64(self._mac(body))}", session

    def check(self, cookie: str, now: float) -> Session | None:
        body, _, mac = cookie.partition(".")
        try:
            good = hmac.compare_digest(_unb64(mac), self._mac(body))
            fields = orjson.loads(_unb64(body)) if good else None
        except (binascii.Error, ValueError, orjson.JSONDecodeError):
            return None
        if not isinstance(fields, dict):
            return None
        session = Session(str(fields.get("sid")), str(fields.get("tid")), int(fields.get("exp", 0)))
        if session.expires <= now or session.sid in self._ended:
            return None
        return session

    def end(self, session: Session, now: float) -> None:
        self._ended = {s: exp for s, exp in self._ended.items() if exp > now}
        self._ended[session.sid] = session.expires

    def _mac(self, body: str) -> bytes:
        return hmac.new(self._key, body.encode(), hashlib.sha256).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signer(request: Request) -> SessionSigner:
    state = request.app.state
    found: SessionSigner | None = getattr(state, "session_signer", None)
    if found is None:
        master_key = running(request).ctx.settings.master_key
        if master_key:
            key = SecretBox.from_master_key(master_key).derive(KEY_PURPOSE)
        else:
            log.warning(
                "EPM_MASTER_KEY is not set: console sessions are signed with a key of this"
                " process only (they end when it restarts and other replicas refuse them)"
            )
            key = secrets.token_bytes(32)
        found = state.session_signer = SessionSigner(key)
    return found


def require_console_header(request: Request) -> None:
    if request.headers.get(CONSOLE_HEADER) != "1":
        raise Forbidden(
            f"a console session may change things only with the header '{CONSOLE_HEADER}: 1'"
            " (the console sends it; scripts should use 'Authorization: Bearer <token>')"
        )


async def session_principal(request: Request) -> Principal | None:
    """The principal of the request's session cookie; None without one; 401 if it ended."""
    cookie = request.cookies.get(COOKIE)
    if not cookie:
        return None
    session = signer(request).check(cookie, time.time())
    principal = await _live_principal(request, session.token_id) if session else None
    if principal is None:
        raise Unauthorized("your console session has ended: sign in again with your token")
    if request.method not in SAFE_METHODS:
        require_console_header(request)
    return principal


async def _live_principal(request: Request, token_id: str) -> Principal | None:
    service = running(request)
    token = await read_caught_up(
        directory_of(service), service.ctx.bus.js, lambda c: token_by_id(c, token_id)
    )
    if token is None or token.revoked:
        return None
    principal = token.principal()
    if await revoked_in_stream(service.ctx.bus.js, principal):
        return None  # revoked on another replica, not yet in our projection
    return principal


# --- routes ---------------------------------------------------------------------------


class SessionIn(BaseModel):
    token: str = Field(min_length=1, max_length=512, description="an EPM token (epm_...)")


class SessionOut(BaseModel):
    name: str
    role: str
    tenant: str | None
    expires_at: int | None = Field(default=None, description="unix seconds")


def _out(principal: Principal, expires: int | None) -> SessionOut:
    return SessionOut(
        name=principal.name, role=principal.role, tenant=principal.tenant, expires_at=expires
    )


@router.post("/v1/session", responses={401: {"description": "unknown or revoked token"}})
async def sign_in(body: SessionIn, request: Request, response: Response) -> SessionOut:
    """Exchange a token for a session cookie (HttpOnly, SameSite=Strict; Secure over https).

    Send ``X-EPM-Console: 1``. The answer says who signed in.
    """
    require_console_header(request)
    token = body.token.strip()
    service = running(request)
    principal = None
    if looks_like_token(token):
        token_hash = hash_token(token)
        principal = await read_caught_up(
            directory_of(service), service.ctx.bus.js, lambda c: principal_by_hash(c, token_hash)
        )
    if principal is None:
        raise Unauthorized("the token is unknown or revoked: ask an administrator for a new one")
    cookie, session = signer(request).issue(principal.token_id, time.time())
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=SESSION_SECONDS,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    request.state.principal = principal
    log.info("console session started", extra={"token_id": principal.token_id})
    return _out(principal, session.expires)


@router.get("/v1/session", responses={401: {"description": "no session, or it ended"}})
async def current_session(request: Request) -> SessionOut:
    """Who this session is (the console asks on load)."""
    cookie = request.cookies.get(COOKIE, "")
    session = signer(request).check(cookie, time.time()) if cookie else None
    principal = await _live_principal(request, session.token_id) if session else None
    if session is None or principal is None:
        raise Unauthorized("not signed in: POST /v1/session with your token")
    request.state.principal = principal
    return _out(principal, session.expires)


@router.delete("/v1/session", status_code=204)
async def sign_out(request: Request) -> Response:
    """Sign out: the cookie is cleared and its session refused from now on."""
    require_console_header(request)
    cookie = request.cookies.get(COOKIE, "")
    session = signer(request).check(cookie, time.time()) if cookie else None
    if session is not None:
        signer(request).end(session, time.time())
        log.info("console session ended", extra={"token_id": session.token_id})
    response = Response(status_code=204)
    response.delete_cookie(
        COOKIE, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https"
    )
    return response
