"""Per-device NATS credentials: issued at enrollment, revoked with the device. And the
revocation of integrators' NATS users (issued by the gateway) with their tokens.

A device's NATS user key is derived from the issuer's device secret and the
device's name (epm_service.natsauth), so its public key is known again at
revocation without being stored; an integrator token's, from the same secret
and the token id. Revoking means the EPM account JWT listing every revoked
device and integrator user, signed with the operator signing key and pushed
to the resolver on ``$SYS.REQ.CLAIMS.UPDATE``; nats-server then closes those
users' connections and refuses new ones.

The worker keeps the resolver in step with the projection: at start, after
each revocation, and every ``RESYNC_SECONDS`` it reads the account JWT the
servers hold and pushes a new one if a revoked user is missing from it (a
lost resolver directory, a push that failed, a revocation made while
request-svc was down).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3

import nats
import nats.errors
import orjson
from epm_service.errors import Unavailable
from epm_service.metrics import NATS_ACCOUNT_JWT_BYTES, NATS_REVOKED_USERS
from epm_service.natsauth import CLAIMS_UPDATE, Issuer, NatsAuthError, decode_jwt
from epm_service.projection_process import ProjectionProcess
from epm_service.settings import Settings
from epm_service.tls import nats_client_context, public_nats_ca
from epm_service.worker import cancel_and_wait
from nats.aio.client import Client, RawCredentials

log = logging.getLogger(__name__)

RESYNC_SECONDS = 30.0
PUSH_TIMEOUT = 5.0
JWT_SIZE_WARNING = 0.8
"""Past this share of the servers' max_payload the account JWT's size is logged as a
warning at every push: every revoked user stays listed (device creds do not expire), and
a JWT over the limit cannot reach the resolver, so no further revocation would."""


def account_jwt_problem(jwt_bytes: int, max_payload: int, revoked: int) -> str | None:
    """Why an account JWT of this size cannot be pushed to servers with this max_payload
    (a sentence an operator can act on), or None."""
    if not max_payload or jwt_bytes <= max_payload:
        return None
    return (
        f"the EPM account JWT revokes {revoked} NATS users and is {jwt_bytes} bytes, more "
        f"than the NATS servers' max_payload ({max_payload} bytes), so it cannot be pushed: "
        "raise max_payload in the NATS configuration (deploy/k8s: nats.conf) and restart "
        "the servers"
    )


def revoked_devices(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    return [
        (str(t), str(d))
        for t, d in conn.execute("SELECT tenant, id FROM devices WHERE revoked = 1 ORDER BY id")
    ]


def revoked_integrators(conn: sqlite3.Connection) -> list[str]:
    """Revoked integrator tokens (their ids), and revoked tokens of unknown role (issued
    before request-svc's store kept tokens: they may be integrators')."""
    rows = conn.execute(
        "SELECT id FROM tokens WHERE revoked = 1 AND (role IS NULL OR role = 'integrator')"
    )
    return [str(t) for (t,) in rows]


class DeviceCredentials:
    def __init__(self, settings: Settings, store: ProjectionProcess) -> None:
        self.settings = settings
        self.store = store
        self.issuer = Issuer.load(settings.nats_issuer) if settings.nats_issuer else None
        # read and checked at start: a missing or bad EPM_PUBLIC_NATS_CA stops request-svc
        self.public_ca = public_nats_ca(settings)
        self._sys: Client | None = None
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def revokes(self) -> bool:
        return (
            self.issuer is not None
            and self.issuer.operator_signing is not None
            and bool(self.issuer.system_creds)
        )

    def nats_answer(self, tenant: str, device_id: str) -> dict[str, str | None]:
        """The enrollment answer's ``nats``: per-device creds when this service issues them,
        and the CA agents should trust for NATS (``EPM_PUBLIC_NATS_CA``) if set."""
        settings = self.settings
        return {
            "url": settings.public_nats_url or settings.nats_url,
            "user": None,
            "password": None,
            "creds": self.issuer.device_creds(tenant, device_id) if self.issuer else None,
            "ca": self.public_ca,
        }

    # --- revocation -------------------------------------------------------------

    async def start(self) -> None:
        if self.revokes:
            self._task = asyncio.create_task(self._run(), name="nats revocations")
        elif self.settings.nats_creds:
            # NATS in operator mode (this process has a user of its own), yet no issuer:
            # enrolled devices would get no NATS user, and a revoked one would keep its own.
            log.error(
                "EPM_NATS_ISSUER is %s: devices enrolled now get no NATS credentials and "
                "revoking a device does not revoke its NATS user; mount the issuer "
                "'epm nats-auth init' writes for request-svc (deploy/README.md, "
                "'NATS authentication')",
                "not set" if self.issuer is None else "an issuer without revocation rights",
            )

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
        if self._sys is not None and not self._sys.is_closed:
            await self._sys.close()

    async def revoke_now(self, what: str = "device") -> None:
        """Push the revocations the projection holds; Unavailable if the servers did not
        take them (the worker keeps trying). ``what`` was revoked: for the message."""
        if not self.revokes:
            return
        try:
            await self._sync()
        except (nats.errors.Error, OSError, TimeoutError, NatsAuthError) as exc:
            self._wake.set()
            raise Unavailable(
                f"the {what} is revoked, but NATS did not take the revocation yet ({exc}); "
                f"it is retried in the background, or revoke the {what} again"
            ) from None

    async def _run(self) -> None:
        while True:
            if self.store.caught_up:
                try:
                    await self._sync()
                except (nats.errors.Error, OSError, TimeoutError, NatsAuthError) as exc:
                    log.warning("could not push NATS revocations: %s", exc)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RESYNC_SECONDS):
                    await self._wake.wait()

    async def _sync(self) -> None:
        assert self.issuer is not None
        async with self._lock:
            devices = await self.store.read(revoked_devices)
            integrators = await self.store.read(revoked_integrators)
            wanted = {self.issuer.device_user(t, d).public for t, d in devices}
            wanted |= {self.issuer.integrator_user(token).public for token in integrators}
            nc = await self._system()
            held = await self._held_revocations(nc)
            if wanted <= held:
                return
            revoked = sorted(wanted | held)
            jwt = self.issuer.account_jwt(revoked).encode()
            problem = account_jwt_problem(len(jwt), nc.max_payload, len(revoked))
            if problem is not None:
                raise NatsAuthError(problem)
            if nc.max_payload and len(jwt) > JWT_SIZE_WARNING * nc.max_payload:
                log.warning(
                    "the EPM account JWT nears the NATS servers' max_payload; raise it before "
                    "revocations stop reaching the servers",
                    extra={
                        "revoked_users": len(revoked),
                        "jwt_bytes": len(jwt),
                        "max_payload": nc.max_payload,
                    },
                )
            reply = await nc.request(CLAIMS_UPDATE, jwt, timeout=PUSH_TIMEOUT)
            answer = orjson.loads(reply.data)
            if answer.get("error"):
                raise NatsAuthError(f"the resolver refused the account JWT: {answer['error']}")
            NATS_ACCOUNT_JWT_BYTES.set(len(jwt))
            NATS_REVOKED_USERS.set(len(revoked))
            log.info("NATS revocations pushed", extra={"revoked_users": len(revoked)})

    async def _held_revocations(self, nc: Client) -> set[str]:
        assert self.issuer is not None
        lookup = f"$SYS.REQ.ACCOUNT.{self.issuer.account}.CLAIMS.LOOKUP"
        reply = await nc.request(lookup, b"", timeout=PUSH_TIMEOUT)
        try:
            claims = decode_jwt(reply.data.decode())
        except (NatsAuthError, UnicodeDecodeError):
            return set()
        held = set((claims.get("nats") or {}).get("revocations") or {})
        NATS_ACCOUNT_JWT_BYTES.set(len(reply.data))
        NATS_REVOKED_USERS.set(len(held))
        return held

    async def _system(self) -> Client:
        assert self.issuer is not None and self.issuer.system_creds
        if self._sys is None or self._sys.is_closed:
            connecting = nats.connect(
                servers=[self.settings.nats_url],
                name="request-svc revocations",
                user_credentials=RawCredentials(self.issuer.system_creds),
                connect_timeout=PUSH_TIMEOUT,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                tls=nats_client_context(self.settings),
            )
            async with asyncio.timeout(2 * PUSH_TIMEOUT):
                self._sys = await connecting
        return self._sys
