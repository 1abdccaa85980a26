"""request-svc commands (docs/internal-contracts.md), each a thin function over the store."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from epm_domain.sealed import SealedError
from epm_domain.sealed import parse_public_key as parse_encryption_key
from epm_events.catalog import (
    DeviceEnrolled,
    DeviceRevoked,
    EnrollmentTokenCreated,
    EnrollmentTokenUsed,
    OfflinePolicy,
)
from epm_events.ids import validate_tenant
from epm_events.subjects import device_inbox_prefix
from epm_service.errors import Conflict, Forbidden, Invalid, NotFound, Unavailable
from epm_service.paging import FOREIGN_CURSOR, next_page, page_limit, start_after
from epm_service.principal import SYSTEM, Principal, a_role
from epm_service.publisher import ConcurrencyConflict
from epm_service.rpc import call
from epm_service.runtime import ServiceContext

from epm_request import enrollment, store
from epm_request.nats_credentials import DeviceCredentials, revoked_integrators
from epm_request.store import RequestStore

log = logging.getLogger(__name__)

APPROVALS = "approval-svc"
ADMIN_ROLES = frozenset({"msp_admin", "tenant_admin"})
REQUEST_READERS = frozenset({"msp_admin", "msp_technician", "tenant_admin", "tenant_technician"})
MAX_PAGE = 200
DEVICE_CURSOR = "devices"  # the device list's cursors (epm_service.paging)


class RequestCommands:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.store = ctx.projection_process(RequestStore.name)
        self.credentials = DeviceCredentials(ctx.settings, self.store)
        ctx.workers.append(self.credentials)  # stopped with the service (its NATS connection)

    def table(self) -> dict[str, Any]:
        return {
            "create_enrollment_token": self.create_enrollment_token,
            "enroll": self.enroll,
            "list_devices": self.list_devices,
            "revoke_device": self.revoke_device,
            "revoke_integrator_nats": self.revoke_integrator_nats,
            "list_requests": self.list_requests,
            "get_request": self.get_request,
        }

    # --- helpers -----------------------------------------------------------------

    async def _visible_tenant(self, principal: Principal, tenant: str) -> str:
        validate_tenant(tenant, allow_global=False)
        if not principal.sees_tenant(tenant):
            raise NotFound(f"tenant {tenant!r} not found")
        exists = await self.store.read(lambda c: store.tenant_exists(c, tenant))
        if not exists:
            raise NotFound(f"tenant {tenant!r} not found; create it first (epm tenant create)")
        return tenant

    # --- enrollment & devices ---------------------------------------------------

    async def create_enrollment_token(self, args: dict[str, Any], p: Principal) -> dict[str, Any]:
        tenant = await self._visible_tenant(p, str(args.get("tenant", "")))
        if p.role not in ADMIN_ROLES:
            raise Forbidden("only tenant_admin or msp_admin may create enrollment tokens")
        ttl = int(args.get("ttl_seconds") or enrollment.DEFAULT_TTL_SECONDS)
        if not 60 <= ttl <= 90 * 86400:
            raise Invalid("ttl_seconds must be between 60 and 7776000 (90 days)")
        token = enrollment.new_enrollment_token()
        expires_at = datetime.now(UTC) + timedelta(seconds=ttl)
        event = EnrollmentTokenCreated(
            enrollment_id=enrollment.new_enrollment_id(),
            token_hash=enrollment.hash_secret(token),
            expires_at=expires_at,
            created_by=p.actor,
        )
        appended = await self.ctx.publisher.append(tenant, [event], 0)
        await self.store.wait_for(appended[-1].seq)
        return {"id": event.enrollment_id, "token": token, "expires_at": expires_at.isoformat()}

    async def enroll(self, args: dict[str, Any], p: Principal) -> dict[str, Any]:
        secret = str(args.get("enrollment_token") or "")
        hostname = str(args.get("hostname") or "").strip()[:255]
        if not hostname:
            raise Invalid("hostname is required")
        encryption_key = str(args.get("encryption_key") or "") or None
        try:
            enrollment.parse_public_key(str(args.get("public_key") or ""))
            if encryption_key is not None:
                parse_encryption_key(encryption_key)
        except (SealedError, enrollment.EnrollmentError) as exc:
            raise Invalid(str(exc)) from None
        try:
            found = await self.store.read(
                lambda c: store.get_enrollment_token(c, enrollment.hash_secret(secret))
            )
            token = enrollment.check_usable(found, datetime.now(UTC))
        except enrollment.EnrollmentError as exc:
            if exc.reason == "bad_key":
                raise Invalid(str(exc)) from None
            raise Forbidden(
                str(exc), status=401 if exc.reason == "unknown" else 403, title="Enrollment refused"
            ) from None
        device_id = enrollment.new_device_id()
        # Offline policy and key material come first: if approval-svc cannot give them,
        # the enrollment token is still unused and the agent can simply try again.
        key_material = None
        if encryption_key is not None:
            key_material = await call(
                self.ctx.bus.nc,
                APPROVALS,
                "device_key_material",
                {"tenant": token.tenant, "device_id": device_id, "encryption_key": encryption_key},
                SYSTEM,
            )
        policy = await self._offline_policy(token.tenant, required=key_material is not None)
        try:
            await self.ctx.publisher.append(
                token.tenant,
                [EnrollmentTokenUsed(enrollment_id=token.id, device_id=device_id)],
                token.last_seq,
            )
        except ConcurrencyConflict:
            raise Conflict(
                "this enrollment token was just used by another device; ask for a new one"
            ) from None
        appended = await self.ctx.publisher.append(
            token.tenant,
            [
                DeviceEnrolled(
                    device_id=device_id,
                    hostname=hostname,
                    public_key=str(args["public_key"]),
                    enrollment_id=token.id,
                    encryption_key=encryption_key,
                )
            ],
            0,
        )
        await self.store.wait_for(appended[-1].seq)
        return {
            "device_id": device_id,
            "tenant": token.tenant,
            "nats": self.credentials.nats_answer(token.tenant, device_id),
            "inbox_prefix": device_inbox_prefix(token.tenant, device_id),
            "subjects": {
                "publish": f"epm.agent.{token.tenant}.{device_id}.>",
                "device": f"epm.device.{token.tenant}.{device_id}.>",
            },
            "policy": policy,
            "key_material": key_material,
        }

    async def _offline_policy(self, tenant: str, *, required: bool) -> dict[str, Any]:
        """The tenant's offline policy from approval-svc. An agent without offline key material
        may enroll while approval-svc is down: it gets the defaults now and the tenant's policy
        on its device channel (approval-svc sends it when it sees DeviceEnrolled)."""
        try:
            policy: dict[str, Any] = await call(
                self.ctx.bus.nc, APPROVALS, "get_policy", {"tenant": tenant}, SYSTEM, timeout=5
            )
        except Unavailable:
            if required:
                raise
            log.warning(
                "approval-svc unavailable; enrollment answer carries the default offline policy",
                extra={"tenant": tenant},
            )
            return OfflinePolicy().model_dump()
        return policy

    async def list_devices(self, args: dict[str, Any], p: Principal) -> dict[str, Any]:
        tenant = await self._visible_tenant(p, str(args.get("tenant", "")))
        if p.role == "integrator":
            raise Forbidden("integrators may read events and audit only")
        offline_open = bool(args.get("offline_open"))
        limit = page_limit(args)
        # decode_cursor checked the key's shape: (int, int, str, str) is a DeviceSortKey
        after = cast(
            "store.DeviceSortKey | None", start_after(DEVICE_CURSOR, args, (int, int, str, str))
        )
        items = await self.store.read(
            lambda c: store.list_devices(
                c, tenant, offline_open=offline_open, after=after, limit=limit
            )
        )
        return {"items": items, **next_page(DEVICE_CURSOR, items, limit, store.device_key)}

    async def revoke_device(self, args: dict[str, Any], p: Principal) -> dict[str, Any]:
        tenant = await self._visible_tenant(p, str(args.get("tenant", "")))
        device_id = str(args.get("device_id", ""))
        device = await self.store.read(lambda c: store.get_device(c, device_id))
        if device is None or device["tenant"] != tenant:
            raise NotFound(f"device {device_id!r} not found in tenant {tenant!r}")
        if p.role not in ADMIN_ROLES:
            raise Forbidden("only tenant_admin or msp_admin may revoke devices")
        if device["revoked"]:
            await self.credentials.revoke_now()  # again: an earlier push may have failed
            return {"device_id": device_id, "revoked": True}
        try:
            appended = await self.ctx.publisher.append(
                tenant,
                [
                    DeviceRevoked(
                        device_id=device_id,
                        revoked_by=p.actor,
                        reason=str(args.get("reason") or ""),
                    )
                ],
                device["last_seq"],
            )
        except ConcurrencyConflict:
            await asyncio.sleep(0.05)
            return await self.revoke_device(args, p)
        await self.store.wait_for(appended[-1].seq)
        await self.credentials.revoke_now()  # its NATS user goes with it, at once
        return {"device_id": device_id, "revoked": True}

    async def revoke_integrator_nats(self, args: dict[str, Any], p: Principal) -> dict[str, Any]:
        """The gateway revoked an integrator token (TokenRevoked at stream sequence ``seq``):
        push its NATS user's revocation now. Only what the projection holds is pushed (who
        may revoke the token was the gateway's to judge), so any caller may ask again."""
        token_id = str(args.get("token_id", ""))
        seq = args.get("seq", 0)
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise Invalid("seq must be the stream sequence of the TokenRevoked event")
        if not await self.store.wait_for(seq, timeout=5):
            raise Unavailable(
                "the token is revoked, but request-svc has not read the revocation yet, so its "
                "NATS credentials are not revoked yet (they will be within a minute); try again"
            )
        revoked = token_id in await self.store.read(revoked_integrators)
        if revoked:
            await self.credentials.revoke_now("integrator token")
        return {"token_id": token_id, "nats_revoked": revoked and self.credentials.revokes}

    # --- requests ----------------------------------------------------------------

    async def list_requests(self, args: dict[str, Any], p: Principal) -> dict[str, Any]:
        # Another tenant is 404 (whatever the role), then a role that may not read is 403.
        tenant = args.get("tenant")
        if tenant is not None:
            tenant = await self._visible_tenant(p, str(tenant))
        if p.role not in REQUEST_READERS:
            raise Forbidden(f"{a_role(p.role)} may not list requests")
        if tenant is None and not p.is_msp:
            tenant = p.tenant  # a tenant's principal sees its own tenant only
        status = str(args.get("status") or "open")
        if status not in ("open", "approved", "denied", "expired", "all"):
            raise Invalid("status must be one of open, approved, denied, expired, all")
        try:
            limit = max(1, min(int(args.get("limit") or 100), MAX_PAGE))
            after = int(args.get("cursor") or 0)
        except ValueError:
            raise Invalid(FOREIGN_CURSOR) from None
        rows = await self.store.read(lambda c: store.list_requests(c, tenant, status, after, limit))
        out: dict[str, Any] = {"items": [store.request_view(state) for _, state in rows]}
        if len(rows) == limit:
            out["next_cursor"] = str(rows[-1][0])
        return out

    async def get_request(self, args: dict[str, Any], p: Principal) -> dict[str, Any]:
        request_id = str(args.get("request_id", ""))
        row = await self.store.read(lambda c: store.get_request_state(c, request_id))
        if row is None:
            raise NotFound(f"request {request_id!r} not found")
        view = store.request_view(row[0])
        if not p.sees_tenant(view["tenant"]):  # another tenant's: as if it did not exist
            raise NotFound(f"request {request_id!r} not found")
        if p.role not in REQUEST_READERS:
            raise Forbidden(f"{a_role(p.role)} may not read requests")
        view["history"] = await self.store.read(lambda c: store.get_history(c, request_id))
        return view
