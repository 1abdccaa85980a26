"""Offline access commands: policy, device key material, response codes, access codes, rotation.

Codes and keys are returned once and never logged; events carry code hashes,
counters and key versions only. Everything a device's key state depends on
(DeviceKeyRotated, OfflineCodeIssued, OfflineResponseIssued) is appended to the
device's offline-key aggregate ``devicekey.<device id>`` with its last sequence
as expectation, so concurrent issuers never share a counter and nothing is
issued under a key version that a rotation has just retired.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

from epm_domain.offline_codes import (
    AccessCode,
    CodeError,
    access_code_hash,
    issue_access_code,
)
from epm_domain.offline_codes import response_code as make_response_code
from epm_domain.sealed import SealedError, derive_device_keys, parse_public_key, seal_device_keys
from epm_events.catalog import (
    DeviceKeyRotated,
    Event,
    OfflineCodeIssued,
    OfflineLockoutLifted,
    OfflinePolicy,
    OfflinePolicyChanged,
    OfflineResponseIssued,
    TenantKeyCreated,
)
from epm_events.ids import new_id, validate_device, validate_tenant
from epm_service.aggregates import read_aggregate
from epm_service.errors import Conflict, Forbidden, Invalid, NotFound
from epm_service.principal import SYSTEM, Principal
from epm_service.projection import Projector
from epm_service.publisher import Appended, ConcurrencyConflict, EventPublisher
from epm_service.runtime import ServiceContext
from epm_service.tenants import tenant_exists
from nats.js import JetStreamContext

from epm_approval import access
from epm_approval.arguments import model, text
from epm_approval.offline import (
    BadGrant,
    CodeGrant,
    CountersExhausted,
    DeviceKeyState,
    PolicyRefused,
    check_code,
    check_count,
    check_request_code,
    check_response,
    evolve_key,
)
from epm_approval.offline_view import OfflineDevice, find_device, find_policy, find_tenant_key
from epm_approval.tenant_keys import TenantKeyring

log = logging.getLogger(__name__)

OFFLINE = "offline"
TENANTS = "tenants"
MAX_APPEND_ATTEMPTS = 100
READ_YOUR_WRITES_SECONDS = 5.0


@dataclass
class Offline:
    """What the offline handlers work with, one per running service."""

    js: JetStreamContext
    publisher: EventPublisher
    view: Projector  # OfflineView
    tenants: Projector  # TenantDirectory
    keyring: TenantKeyring
    key_locks: dict[str, asyncio.Lock] = field(default_factory=dict)  # one creator per tenant

    @classmethod
    def of(cls, ctx: ServiceContext, keyring: TenantKeyring) -> Offline:
        view = ctx.projector(OFFLINE)
        found = _RUNNING.get(view)
        if found is None:
            found = _RUNNING[view] = cls(
                ctx.bus.js, ctx.publisher, view, ctx.projector(TENANTS), keyring
            )
        return found


_RUNNING: weakref.WeakKeyDictionary[Projector, Offline] = weakref.WeakKeyDictionary()
P = ParamSpec("P")
R = TypeVar("R")
E = TypeVar("E", bound=Event)


@dataclass(frozen=True, slots=True)
class IssuedCode:
    code: str  # shown once, never stored
    code_id: str
    counter: int
    key_version: int
    grant: CodeGrant

    def to_api(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "expires_at": self.grant.expires_at.isoformat(),
            "code_id": self.code_id,
            "purpose": self.grant.purpose,
            "key_version": self.key_version,
        }


class OfflineCommands:
    def __init__(self, offline: Offline) -> None:
        self.o = offline

    # --- policy ------------------------------------------------------------------------

    async def get_policy(self, args: dict[str, Any], principal: Principal) -> dict[str, Any]:
        tenant = await self._tenant(args, principal)
        access.require_policy_reader(principal)
        policy, _ = await self.o.view.read(lambda c: find_policy(c, tenant))
        return policy.model_dump()

    async def set_policy(self, args: dict[str, Any], principal: Principal) -> dict[str, Any]:
        tenant = await self._tenant(args, principal)
        access.require_policy_writer(principal)
        policy = model(OfflinePolicy, args.get("policy"), "offline policy")
        event = OfflinePolicyChanged(tenant_id=tenant, policy=policy, changed_by=principal.actor)
        _, expected = await self.o.view.read(lambda c: find_policy(c, tenant))
        for _attempt in range(MAX_APPEND_ATTEMPTS):
            try:
                [done] = await self.o.publisher.append(tenant, [event], expected)
                break
            except ConcurrencyConflict:
                # PUT replaces the whole policy: the last writer wins, in stream order.
                stored = await read_aggregate(self.o.js, tenant, "policy", tenant)
                expected = stored[-1].seq if stored else 0
        else:  # pragma: no cover - a hundred writers of one tenant's policy at once
            raise Conflict("the offline policy is being changed by others; try again")
        log.info(
            "offline policy changed",
            extra={"tenant": tenant, "event_id": done.envelope.id, "by": principal.actor},
        )
        await self.o.view.wait_for(done.seq, timeout=READ_YOUR_WRITES_SECONDS)
        return policy.model_dump()

    # --- key material at enrollment (request-svc) ---------------------------------------

    async def device_key_material(
        self, args: dict[str, Any], principal: Principal
    ) -> dict[str, Any]:
        if principal.token_id != SYSTEM.token_id:
            raise Forbidden("device_key_material is called by request-svc at enrollment only")
        tenant = validate_tenant(text(args, "tenant", max_len=63), allow_global=False)
        device_id = validate_device(text(args, "device_id", max_len=63))
        try:
            recipient = parse_public_key(text(args, "encryption_key", max_len=100))
        except SealedError as exc:
            raise Invalid(str(exc)) from None
        known = await self.o.view.read(lambda c: find_device(c, device_id))
        version = known.key.key_version if known is not None else 1
        master = await self.tenant_key(tenant)
        material = seal_device_keys(
            derive_device_keys(master, tenant, device_id, version), recipient
        )
        log.info(
            "device key material sealed",
            extra={"tenant": tenant, "device_id": device_id, "key_version": version},
        )
        return material

    # --- help-desk response codes ---------------------------------------------------------

    async def offline_response(self, args: dict[str, Any], principal: Principal) -> dict[str, Any]:
        tenant = await self._tenant(args, principal)
        access.require_offline_issuer(principal)
        device = await self._device(tenant, args)
        request_code = _checked(check_request_code, args.get("request_code"))
        policy, _ = await self.o.view.read(lambda c: find_policy(c, tenant))
        grant = _checked(
            check_response,
            policy,
            str(args.get("grant") or ""),
            args.get("sha256"),
            args.get("minutes"),
        )
        master = await self.tenant_key(tenant)
        done, event, state = await self._append_on_key(
            tenant,
            device,
            lambda state: OfflineResponseIssued(
                device_id=device.id,
                response_id=new_id("resp"),
                grant=grant.grant,
                sha256=grant.sha256,
                minutes=grant.minutes or None,
                key_version=state.key_version,
                issued_by=principal.actor,
            ),
            busy="this device's codes are being issued by many at once; try again",
        )
        keys = derive_device_keys(master, tenant, device.id, state.key_version)
        code = make_response_code(keys.response, device.id, request_code, grant, state.key_version)
        log.info(
            "offline response issued",
            extra={
                "tenant": tenant,
                "device_id": device.id,
                "response_id": event.response_id,
                "grant": grant.grant,
                "key_version": state.key_version,
                "by": principal.actor,
            },
        )
        await self.o.view.wait_for(done.seq, timeout=READ_YOUR_WRITES_SECONDS)
        return {
            "response_code": code,
            "response_id": event.response_id,
            "grant": grant.grant,
            "key_version": state.key_version,
        }

    # --- offline access codes ------------------------------------------------------------

    async def offline_codes(self, args: dict[str, Any], principal: Principal) -> dict[str, Any]:
        tenant = await self._tenant(args, principal)
        access.require_offline_issuer(principal)
        device = await self._device(tenant, args)
        count = _checked(check_count, args.get("count"))
        grant = await self._code_grant(tenant, args, self_generated=False)
        issued = await self.issue_codes(
            tenant, device, grant, count, issued_by=principal.actor, self_generated=False
        )
        return {"codes": [c.to_api() for c in issued]}

    async def self_generated_code(
        self, tenant: str, device: OfflineDevice, args: dict[str, Any]
    ) -> IssuedCode:
        """The device's own ``offline generate`` (epm_approval.device_commands authenticates)."""
        usable(device)
        grant = await self._code_grant(tenant, args, self_generated=True)
        [issued] = await self.issue_codes(
            tenant, device, grant, 1, issued_by=f"device:{device.id}", self_generated=True
        )
        return issued

    async def _code_grant(
        self, tenant: str, args: dict[str, Any], *, self_generated: bool
    ) -> CodeGrant:
        policy, _ = await self.o.view.read(lambda c: find_policy(c, tenant))
        return _checked(
            check_code,
            policy,
            str(args.get("purpose") or ""),
            now=datetime.now(UTC),
            sha256=args.get("sha256"),
            minutes=args.get("minutes"),
            expires_in=args.get("expires_in"),
            self_generated=self_generated,
        )

    async def issue_codes(
        self,
        tenant: str,
        device: OfflineDevice,
        grant: CodeGrant,
        count: int,
        *,
        issued_by: str,
        self_generated: bool,
    ) -> list[IssuedCode]:
        master = await self.tenant_key(tenant)
        state = device.key
        today = datetime.now(UTC).date()
        out: list[IssuedCode] = []
        conflicts = 0
        while len(out) < count:
            try:
                [counter] = state.counters(1)
            except CountersExhausted as exc:
                raise Conflict(str(exc)) from None
            keys = derive_device_keys(master, tenant, device.id, state.key_version)
            try:
                code = issue_access_code(
                    keys.access_code,
                    device.id,
                    AccessCode(
                        counter, grant.purpose, grant.expires_on, grant.minutes, grant.sha256
                    ),
                    state.key_version,
                    today,
                )
            except CodeError as exc:
                raise Invalid(str(exc)) from None
            event = OfflineCodeIssued(
                device_id=device.id,
                code_id=new_id("code"),
                purpose=grant.purpose,
                counter=counter,
                code_hash=access_code_hash(code, keys.access_code),
                sha256=grant.sha256,
                minutes=grant.minutes or None,
                expires_at=grant.expires_at,
                issued_by=issued_by,
                key_version=state.key_version,
                self_generated=self_generated,
            )
            try:
                [done] = await self.o.publisher.append(tenant, [event], state.last_seq)
            except ConcurrencyConflict:
                conflicts += 1
                if conflicts > MAX_APPEND_ATTEMPTS:  # pragma: no cover
                    raise Conflict(
                        "too many codes issued for this device at once; try again"
                    ) from None
                fresh = await self._key_state(tenant, device.id)
                if out and fresh.key_version != state.key_version:
                    raise Conflict(
                        "the device key was rotated while these codes were issued, which voids "
                        "them; issue them again"
                    ) from None
                state = fresh
                continue
            state = evolve_key(state, event, done.seq)
            out.append(IssuedCode(code, event.code_id, counter, event.key_version, grant))
        log.info(
            "offline codes issued",
            extra={
                "tenant": tenant,
                "device_id": device.id,
                "code_ids": [c.code_id for c in out],
                "counters": [c.counter for c in out],
                "purpose": grant.purpose,
                "key_version": state.key_version,
                "self_generated": self_generated,
                "by": issued_by,
            },
        )
        await self.o.view.wait_for(state.last_seq, timeout=READ_YOUR_WRITES_SECONDS)
        return out

    # --- rotation --------------------------------------------------------------------------

    async def rotate_device_key(self, args: dict[str, Any], principal: Principal) -> dict[str, Any]:
        return await self._rotate(args, principal, reason="rotated")

    async def revoke_device_codes(
        self, args: dict[str, Any], principal: Principal
    ) -> dict[str, Any]:
        """Voids every unused code (and response) of the device: a new key version, sent to the
        device; the agent refuses older codes as soon as it has read it."""
        return await self._rotate(args, principal, reason="codes revoked")

    async def rotate_owed(self, tenant: str, device_id: str, reason: str) -> dict[str, Any]:
        """A rotation owed by a replayed offline admin session (epm_approval.owed_rotations)."""
        return await self._rotate({"tenant": tenant, "device_id": device_id}, SYSTEM, reason)

    async def _rotate(
        self, args: dict[str, Any], principal: Principal, reason: str
    ) -> dict[str, Any]:
        tenant = await self._tenant(args, principal)
        access.require_device_key_admin(principal)
        device = await self._device(tenant, args)
        await self.tenant_key(tenant)  # the projection seals the new material with it
        state = device.key
        for _attempt in range(MAX_APPEND_ATTEMPTS):
            event = DeviceKeyRotated(
                device_id=device.id,
                key_version=state.key_version + 1,
                reason=reason,
                rotated_by=principal.actor,
            )
            try:
                [done] = await self.o.publisher.append(tenant, [event], state.last_seq)
                break
            except ConcurrencyConflict:
                fresh = await self._key_state(tenant, device.id)
                if fresh.key_version > state.key_version:
                    # Someone rotated a moment ago: every older code is void already.
                    return {"device_id": device.id, "key_version": fresh.key_version}
                state = fresh
        else:  # pragma: no cover
            raise Conflict("this device's key is being changed by many at once; try again")
        log.info(
            "device key rotated",
            extra={
                "tenant": tenant,
                "device_id": device.id,
                "key_version": event.key_version,
                "reason": reason,
                "by": principal.actor,
            },
        )
        await self.o.view.wait_for(done.seq, timeout=READ_YOUR_WRITES_SECONDS)
        return {"device_id": device.id, "key_version": event.key_version}

    # --- lockout lift -----------------------------------------------------------------------

    async def lift_lockout(self, args: dict[str, Any], principal: Principal) -> dict[str, Any]:
        """OfflineLockoutLifted: the device's offline-code lockout ends when the agent next
        reads its device channel (the view's outbox sends it a LockoutLift)."""
        tenant = await self._tenant(args, principal)
        access.require_lockout_lifter(principal)
        device = await self._device(tenant, args)
        reason = text(args, "reason", max_len=500, default="")
        done, _, _ = await self._append_on_key(
            tenant,
            device,
            lambda _state: OfflineLockoutLifted(
                device_id=device.id, lifted_by=principal.actor, reason=reason
            ),
            busy="this device's offline state is being changed by many; try again",
        )
        log.info(
            "device lockout lifted",
            extra={
                "tenant": tenant,
                "device_id": device.id,
                "event_id": done.envelope.id,
                "by": principal.actor,
            },
        )
        await self.o.view.wait_for(done.seq, timeout=READ_YOUR_WRITES_SECONDS)
        return {
            "device_id": device.id,
            "lifted_by": principal.actor,
            "lift_id": done.envelope.id,
            "delivered": "when the computer is next online (status, request, sync)",
        }

    # --- shared --------------------------------------------------------------------------

    async def _append_on_key(
        self,
        tenant: str,
        device: OfflineDevice,
        make: Callable[[DeviceKeyState], E],
        *,
        busy: str,
    ) -> tuple[Appended, E, DeviceKeyState]:
        """``make(state)`` appended to the device's key aggregate at its last sequence, made
        again from the fresh state while others move it on (a code issued, a rotation); the
        append, the event and the state it was made from. ``busy``: the 409 if they never
        stop."""
        state = device.key
        for _attempt in range(MAX_APPEND_ATTEMPTS):
            event = make(state)
            try:
                [done] = await self.o.publisher.append(tenant, [event], state.last_seq)
                return done, event, state
            except ConcurrencyConflict:
                state = await self._key_state(tenant, device.id)
        raise Conflict(busy)  # pragma: no cover

    async def tenant_key(self, tenant: str) -> bytes:
        """The tenant's offline master key, created (TenantKeyCreated) on its first need."""
        lock = self.o.key_locks.setdefault(tenant, asyncio.Lock())
        async with lock:
            found = await self.o.view.read(lambda c: find_tenant_key(c, tenant))
            if found is None:
                ciphertext = self.o.keyring.new_key(tenant, 1)
                event = TenantKeyCreated(tenant_id=tenant, key_version=1, ciphertext=ciphertext)
                try:
                    [done] = await self.o.publisher.append(tenant, [event], 0)
                    log.info("tenant offline key created", extra={"tenant": tenant})
                    await self.o.view.wait_for(done.seq, timeout=READ_YOUR_WRITES_SECONDS)
                    found = (1, ciphertext)
                except ConcurrencyConflict:
                    # Another replica created it first: that one is the tenant's key.
                    stored = await read_aggregate(self.o.js, tenant, "tenantkey", tenant)
                    first = stored[0].event
                    assert isinstance(first, TenantKeyCreated)
                    found = (first.key_version, first.ciphertext)
            return self.o.keyring.open(tenant, *found)

    async def _tenant(self, args: dict[str, Any], principal: Principal) -> str:
        tenant = validate_tenant(text(args, "tenant", max_len=63), allow_global=False)
        access.require_visible(principal, tenant, f"tenant {tenant!r}")
        if not await self.o.tenants.read(lambda c: tenant_exists(c, tenant)):
            raise NotFound(f"tenant {tenant!r} not found; check the id (epm tenant list)")
        return tenant

    async def _device(self, tenant: str, args: dict[str, Any]) -> OfflineDevice:
        device_id = validate_device(text(args, "device_id", max_len=63))
        device = await self.known_device(tenant, device_id)
        if device is None:
            raise NotFound(
                f"device {device_id!r} not found in tenant {tenant!r}; pick one from the "
                f"tenant's computers (GET /v1/tenants/{tenant}/devices)"
            )
        return usable(device)

    async def known_device(self, tenant: str, device_id: str) -> OfflineDevice | None:
        """The tenant's device as the offline view has it, None if the tenant has no such one."""
        device = await self.o.view.read(lambda c: find_device(c, device_id))
        if device is None:
            # Enrolled a moment ago? The stream is the truth; wait until the view has it.
            stored = await read_aggregate(self.o.js, tenant, "device", device_id)
            if stored:
                await self.o.view.wait_for(stored[0].seq, timeout=READ_YOUR_WRITES_SECONDS)
                device = await self.o.view.read(lambda c: find_device(c, device_id))
        return device if device is not None and device.tenant == tenant else None

    async def _key_state(self, tenant: str, device_id: str) -> DeviceKeyState:
        """The device's key state as the stream has it (the projection may be behind)."""
        state = DeviceKeyState()
        for stored in await read_aggregate(self.o.js, tenant, "devicekey", device_id):
            state = evolve_key(state, stored.event, stored.seq)
        return state


def usable(device: OfflineDevice) -> OfflineDevice:
    """A device that may get offline codes: not revoked, with key material to check them."""
    if device.revoked:
        raise Conflict(
            f"device {device.id} was revoked: it gets no more offline codes; "
            "enroll it again if it is back in service"
        )
    if not device.encryption_key:
        raise Conflict(
            f"device {device.id} enrolled without an encryption key, so it has no offline "
            "key material; update its agent and enroll it again"
        )
    return device


def _checked(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Domain refusals as command errors: policy -> 403, bad input -> 422."""
    try:
        return fn(*args, **kwargs)
    except PolicyRefused as exc:
        raise Forbidden(str(exc), extra={"provision": exc.provision}) from None
    except BadGrant as exc:
        raise Invalid(str(exc)) from None
