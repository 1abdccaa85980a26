"""The gateway's outer guard: rate limits, body size limit and security headers.

One pure ASGI middleware, outside every route, so a flood is refused before it
costs a token lookup, a body parse or a NATS round trip:

- **Rate limits**: a token bucket per principal (keyed by a hash of the bearer
  token or the console's session cookie, so unauthenticated floods with made-up
  tokens are counted too) and one per source address. In memory, per replica:
  N replicas allow N times the rate, which is why the defaults are generous.
  Over the limit: 429 problem+json with ``Retry-After``. Probes and metrics
  (``/healthz``, ``/readyz``, ``/metrics``) are never limited. The source
  address is what uvicorn reports, i.e. ``X-Forwarded-For`` only from the
  proxies in its ``FORWARDED_ALLOW_IPS``.
- **Body size**: a declared ``Content-Length`` above the limit is refused at
  once (413); a chunked body is counted as it arrives and refused the moment it
  passes the limit, before the route sees any of it.
- **Headers** on every answer (a route's own values win, so the console keeps
  its page policy): ``X-Content-Type-Options``, ``Referrer-Policy``,
  ``X-Frame-Options``, a Content-Security-Policy that lets nothing load or
  frame an API answer, ``Cache-Control: no-store`` on ``/v1`` (tokens are shown
  once and must not sit in a cache), and HSTS when served over https.

``revoked_in_stream`` is the other half of token hygiene: authentication asks
the stream whether a token it found valid was revoked on another replica.

Settings (``EPM_*``): ``EPM_RATE_PER_PRINCIPAL`` / ``EPM_BURST_PER_PRINCIPAL``,
``EPM_RATE_PER_ADDRESS`` / ``EPM_BURST_PER_ADDRESS`` (requests per second and
bucket size; 0 turns a limit off), ``EPM_MAX_BODY_BYTES``, ``EPM_HSTS_MAX_AGE``.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from epm_events.streams import EVENTS
from epm_events.subjects import event_subject
from epm_service.errors import Unavailable
from epm_service.principal import Principal
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from prometheus_client import Counter
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from epm_gateway.domain import event_tenant
from epm_gateway.problems import problem

EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
SESSION_COOKIE = "epm_session"  # epm_gateway.session.COOKIE (imported there would be a cycle)
MAX_TRACKED_KEYS = 100_000  # buckets kept per limit; the least recently used go first

REFUSED = Counter(
    "epm_gateway_refused_total",
    "HTTP requests refused by the gateway's guard before any route",
    ["reason"],
)

API_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
HTML_POLICY = "frame-ancestors 'none'"  # pages that bring their own policy keep it


class HardeningSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EPM_", extra="ignore")

    rate_per_principal: float = 50.0  # requests per second, refilled continuously
    burst_per_principal: int = 200
    rate_per_address: float = 100.0
    burst_per_address: int = 400
    max_body_bytes: int = 256 * 1024
    hsts_max_age: int = 63_072_000  # two years; sent over https only


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


class TokenBuckets:
    """Token buckets by key; a key's bucket starts full and refills at ``rate`` per second."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = MAX_TRACKED_KEYS,
    ) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, key: str) -> float:
        """Take one token: 0.0 if allowed, else the seconds until one is there."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate


class BodyTooLarge(Exception):
    pass


class Hardening:
    """The ASGI middleware; ``install`` puts it around the whole app."""

    def __init__(self, app: ASGIApp, settings: HardeningSettings, https: bool = False) -> None:
        self.app = app
        self.settings = settings
        self.per_principal = TokenBuckets(settings.rate_per_principal, settings.burst_per_principal)
        self.per_address = TokenBuckets(settings.rate_per_address, settings.burst_per_address)
        self.https_deployment = https  # EPM_PUBLIC_URL is https: TLS ends at a proxy before us

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = self._with_headers(scope, send)
        path: str = scope.get("path", "")
        if path not in EXEMPT_PATHS:
            wait = self._rate_limited(scope)
            if wait:
                REFUSED.labels("rate_limit").inc()
                await self._refuse_rate(scope, receive, send, wait)
                return
        limit = self.settings.max_body_bytes
        headers = _headers(scope)
        declared = headers.get("content-length")
        if limit > 0 and declared is not None:
            if declared.isdigit() and int(declared) > limit:
                REFUSED.labels("body_too_large").inc()
                await self._refuse_size(scope, receive, send)
                return
        elif limit > 0 and "transfer-encoding" in headers:
            try:
                receive = await _buffered(receive, limit)
            except BodyTooLarge:
                REFUSED.labels("body_too_large").inc()
                await self._refuse_size(scope, receive, send)
                return
        await self.app(scope, receive, send)

    # --- rate limits -------------------------------------------------------------------

    def _rate_limited(self, scope: Scope) -> float:
        client = scope.get("client")
        address = client[0] if client else "unknown"
        wait = self.per_address.take(address)
        credential = _credential(scope)
        if credential is not None and not wait:
            wait = self.per_principal.take(credential)
        return wait

    async def _refuse_rate(self, scope: Scope, receive: Receive, send: Send, wait: float) -> None:
        seconds = max(1, math.ceil(wait))
        response = problem(
            Request(scope, receive),
            429,
            "Too Many Requests",
            f"too many requests from this client: slow down and retry in {seconds} s"
            " (limits per token and per address: EPM_RATE_PER_PRINCIPAL,"
            " EPM_RATE_PER_ADDRESS)",
            headers={"Retry-After": str(seconds)},
        )
        await response(scope, receive, send)

    async def _refuse_size(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.settings.max_body_bytes
        response = problem(
            Request(scope, receive),
            413,
            "Content Too Large",
            f"the request body is larger than {limit} bytes, the most this API accepts"
            " (EPM_MAX_BODY_BYTES): send less per request",
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)

    # --- headers ----------------------------------------------------------------------

    def _with_headers(self, scope: Scope, send: Send) -> Send:
        https = scope.get("scheme") == "https" or self.https_deployment
        path: str = scope.get("path", "")
        api = path.startswith("/v1/")
        hsts = f"max-age={self.settings.hsts_max_age}; includeSubDomains"

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                raw: list[tuple[bytes, bytes]] = list(message.get("headers", []))
                present = {k.lower() for k, _ in raw}
                html = any(
                    k.lower() == b"content-type" and v.startswith(b"text/html") for k, v in raw
                )

                def default(name: bytes, value: str) -> None:
                    if name not in present:
                        raw.append((name, value.encode("latin-1")))

                default(b"x-content-type-options", "nosniff")
                default(b"referrer-policy", "no-referrer")
                default(b"x-frame-options", "DENY")
                default(b"content-security-policy", HTML_POLICY if html else API_POLICY)
                default(b"cross-origin-opener-policy", "same-origin")
                default(b"cross-origin-resource-policy", "same-origin")
                if api:
                    default(b"cache-control", "no-store")
                if https:
                    default(b"strict-transport-security", hsts)
                message = {**message, "headers": raw}
            await send(message)

        return sending


def install(app: Any, *, public_url: str, settings: HardeningSettings | None = None) -> None:
    """Wrap the app (call last in create_app, so the guard is the outermost middleware)."""
    https = public_url.startswith("https://")
    app.add_middleware(Hardening, settings=settings or HardeningSettings(), https=https)


# --- revocation ----------------------------------------------------------------------


async def revoked_in_stream(js: JetStreamContext, principal: Principal) -> bool:
    """Whether EPM_EVENTS holds a TokenRevoked for this principal's token.

    A replica learns of a revocation made on another one through its projection,
    a few milliseconds later; asking the stream (one direct get of one subject)
    closes that window, so a revoked token is refused at once on every replica.
    Fails closed: if NATS cannot say, the request is refused (503).
    """
    subject = event_subject(
        event_tenant(principal.tenant), "token", principal.token_id, "TokenRevoked"
    )
    try:
        await js.get_last_msg(EVENTS.name, subject, direct=True)
    except NotFoundError:
        return False
    except (NatsError, TimeoutError) as exc:
        raise Unavailable(
            f"cannot confirm that the token is still valid (NATS: {type(exc).__name__});"
            " try again in a moment"
        ) from None
    return True


# --- ASGI helpers ---------------------------------------------------------------------


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _credential(scope: Scope) -> str | None:
    """A key for the principal: a hash of its bearer token or session cookie (never the secret)."""
    headers = _headers(scope)
    secret: str | None = None
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        secret = value.strip()
    elif SESSION_COOKIE + "=" in headers.get("cookie", ""):
        for part in headers["cookie"].split(";"):
            name, _, value = part.strip().partition("=")
            if name == SESSION_COOKIE and value:
                secret = value
                break
    if secret is None:
        return None
    return hashlib.sha256(secret.encode()).hexdigest()[:32]


async def _buffered(receive: Receive, limit: int) -> Receive:
    """Read a chunked body up to ``limit`` bytes, then hand it to the app as one message."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return _replay([message], receive)
        body: bytes = message.get("body", b"")
        size += len(body)
        if size > limit:
            raise BodyTooLarge
        chunks.append(body)
        if not message.get("more_body", False):
            break
    whole: MutableMapping[str, Any] = {"type": "http.request", "body": b"".join(chunks)}
    return _replay([whole], receive)


def _replay(first: list[MutableMapping[str, Any]], receive: Receive) -> Receive:
    pending = list(first)

    async def receiving() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return receiving
