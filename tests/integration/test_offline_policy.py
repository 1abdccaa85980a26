"""Offline policy and enrollment key material, on a real nats-server with approval-svc and
request-svc in process. Helpers here are shared by the other test_offline_* files."""

from __future__ import annotations

import base64
import contextlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from epm_approval.app import DEFINITION as APPROVAL
from epm_domain.sealed import DeviceKeys, new_private_key, open_device_keys
from epm_events.agent import PolicyUpdate
from epm_events.catalog import TenantCreated
from epm_events.streams import DEVICE
from epm_events.subjects import device_subject
from epm_request.app import DEFINITION as REQUESTS
from epm_service.bus import Bus
from epm_service.errors import CommandError
from epm_service.principal import SYSTEM, Principal
from epm_service.publisher import EventPublisher
from epm_service.rpc import call
from epm_service.runtime import RunningService, start_service
from epm_service.settings import Settings
from nats.errors import ConnectionClosedError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from tests.integration.test_request_svc import eventually

T = TypeVar("T")

ACME_TECH = Principal("tok-1", "alice", "tenant_technician", "acme")
ACME_ADMIN = Principal("tok-2", "ann", "tenant_admin", "acme")
GLOBEX_TECH = Principal("tok-3", "gus", "tenant_technician", "globex")
GLOBEX_ADMIN = Principal("tok-6", "gil", "tenant_admin", "globex")
MSP_ADMIN = Principal("tok-4", "mo", "msp_admin", None)
INTEGRATOR = Principal("tok-5", "ivy", "integrator", None)
DEFAULTS = {
    "challenge_response": True,
    "app_codes": True,
    "admin_codes": False,
    "self_service": False,
    "max_admin_minutes": 60,
    "response_any_app": False,
}


@dataclass
class Device:
    """What an agent keeps after enrolling: its ids, its two private keys, the answer."""

    tenant: str
    device_id: str
    signing_key: Ed25519PrivateKey
    encryption_private: bytes
    answer: dict[str, Any]

    def keys(self, key_material: dict[str, Any] | None = None) -> DeviceKeys:
        """What the agent does with key material: open it with its X25519 private key."""
        material = key_material or self.answer["key_material"]
        return open_device_keys(material, self.encryption_private, self.tenant, self.device_id)


@pytest.fixture
def offline_settings(settings: Settings) -> Settings:
    settings.master_key = base64.b64encode(secrets.token_bytes(32)).decode()
    return settings


@pytest.fixture
async def services(
    bus: Bus, offline_settings: Settings
) -> AsyncIterator[tuple[RunningService, RunningService]]:
    pub = EventPublisher(bus.js, "/epm/gateway")
    for tenant in ("acme", "globex"):
        await pub.append(tenant, [TenantCreated(tenant_id=tenant, name=tenant, created_by="t")], 0)
    approval = await start_service(APPROVAL, offline_settings)
    requests = await start_service(REQUESTS, offline_settings)
    yield approval, requests
    await requests.stop()
    with contextlib.suppress(ConnectionClosedError):  # a rebuild test stopped it already
        await approval.stop()


async def ask(bus: Bus, command: str, principal: Principal = MSP_ADMIN, **args: Any) -> Any:
    return await call(bus.nc, "approval-svc", command, args, principal)


async def refused(bus: Bus, command: str, principal: Principal, **args: Any) -> CommandError:
    with pytest.raises(CommandError) as exc:
        await ask(bus, command, principal, **args)
    return exc.value


async def enroll(bus: Bus, tenant: str = "acme", *, with_encryption_key: bool = True) -> Device:
    created = await call(
        bus.nc, "request-svc", "create_enrollment_token", {"tenant": tenant}, MSP_ADMIN
    )
    signing = Ed25519PrivateKey.generate()
    public = signing.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    private, encryption_public = new_private_key()
    args = {
        "enrollment_token": created["token"],
        "public_key": base64.b64encode(public).decode(),
        "hostname": "pc-1",
    }
    if with_encryption_key:
        args["encryption_key"] = base64.b64encode(encryption_public).decode()
    answer = await call(bus.nc, "request-svc", "enroll", args, SYSTEM)
    return Device(tenant, answer["device_id"], signing, private, answer)


async def device_messages(bus: Bus, device: Device, kind: str) -> list[dict[str, Any]]:
    """What the device would read from its EPM_DEVICE subject for ``kind``, in order."""
    psub = await bus.js.pull_subscribe(
        device_subject(device.tenant, device.device_id, kind),
        stream=DEVICE.name,
        config=ConsumerConfig(
            ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, mem_storage=True
        ),
    )
    try:
        pending = (await psub.consumer_info()).num_pending or 0
        msgs = await psub.fetch(pending, timeout=5) if pending else []
        return [orjson.loads(m.data) for m in msgs]
    finally:
        await psub.unsubscribe()


async def wait_device_messages(
    bus: Bus, device: Device, kind: str, count: int
) -> list[dict[str, Any]]:
    async def enough() -> list[dict[str, Any]] | None:
        found = await device_messages(bus, device, kind)
        return found if len(found) >= count else None

    return await eventually(enough)


# --- policy -------------------------------------------------------------------------------


async def test_policy_has_the_documented_defaults_until_an_admin_sets_it(
    bus: Bus, services: Any
) -> None:
    assert await ask(bus, "get_policy", ACME_TECH, tenant="acme") == DEFAULTS
    wanted = {**DEFAULTS, "admin_codes": True, "max_admin_minutes": 120}
    assert await ask(bus, "set_policy", ACME_ADMIN, tenant="acme", policy=wanted) == wanted
    assert await ask(bus, "get_policy", ACME_TECH, tenant="acme") == wanted
    assert await ask(bus, "get_policy", GLOBEX_TECH, tenant="globex") == DEFAULTS


async def test_put_replaces_the_whole_policy_and_msp_admin_may_set_it(
    bus: Bus, services: Any
) -> None:
    await ask(bus, "set_policy", ACME_ADMIN, tenant="acme", policy={"admin_codes": True})
    got = await ask(bus, "set_policy", MSP_ADMIN, tenant="acme", policy={"self_service": True})
    assert got == {**DEFAULTS, "self_service": True}  # admin_codes back to its default


async def test_only_admins_change_the_policy_and_other_tenants_see_nothing(
    bus: Bus, services: Any
) -> None:
    policy = {**DEFAULTS, "self_service": True}
    assert (await refused(bus, "set_policy", ACME_TECH, tenant="acme", policy=policy)).status == 403
    assert (await refused(bus, "get_policy", INTEGRATOR, tenant="acme")).status == 403
    assert (await refused(bus, "get_policy", GLOBEX_TECH, tenant="acme")).status == 404
    err = await refused(bus, "set_policy", GLOBEX_ADMIN, tenant="acme", policy=policy)
    assert err.status == 404 and "acme" in err.detail
    assert (await refused(bus, "get_policy", MSP_ADMIN, tenant="nope")).status == 404


async def test_an_impossible_policy_is_refused_with_what_to_fix(bus: Bus, services: Any) -> None:
    err = await refused(
        bus, "set_policy", ACME_ADMIN, tenant="acme", policy={"max_admin_minutes": 0}
    )
    assert err.status == 422 and "max_admin_minutes" in err.detail
    err = await refused(bus, "set_policy", ACME_ADMIN, tenant="acme", policy={"admin": True})
    assert err.status == 422 and "admin" in err.detail


async def test_every_policy_change_reaches_every_enrolled_device_of_the_tenant(
    bus: Bus, services: Any
) -> None:
    one, two = await enroll(bus), await enroll(bus)
    other = await enroll(bus, "globex")
    await ask(bus, "set_policy", ACME_ADMIN, tenant="acme", policy={"admin_codes": True})
    await ask(bus, "set_policy", ACME_ADMIN, tenant="acme", policy={"app_codes": False})
    for device in (one, two):
        updates = [
            PolicyUpdate.model_validate(m)
            for m in await wait_device_messages(bus, device, "policy", 2)
        ]
        assert [u.policy.admin_codes for u in updates] == [True, False]
        assert updates[-1].policy.app_codes is False
        assert updates[0].seq < updates[1].seq  # the agent keeps the highest
    assert await device_messages(bus, other, "policy") == []


async def test_a_device_enrolled_after_a_change_gets_the_current_policy(
    bus: Bus, services: Any
) -> None:
    await ask(bus, "set_policy", ACME_ADMIN, tenant="acme", policy={"self_service": True})
    device = await enroll(bus)
    assert device.answer["policy"]["self_service"] is True
    [update] = await wait_device_messages(bus, device, "policy", 1)
    assert update["policy"]["self_service"] is True


# --- enrollment -----------------------------------------------------------------------------


async def test_enrollment_answer_carries_key_material_only_the_device_opens(
    bus: Bus, services: Any
) -> None:
    device = await enroll(bus)
    material = device.answer["key_material"]
    assert material["key_version"] == 1 and material["sealed"]["alg"]
    keys = device.keys()
    assert (keys.key_version, len(keys.response), len(keys.access_code)) == (1, 32, 32)
    assert keys.response != keys.access_code
    stranger = await enroll(bus)
    with pytest.raises(ValueError, match="does not open"):
        open_device_keys(material, stranger.encryption_private, "acme", device.device_id)


async def test_a_device_without_an_encryption_key_enrolls_without_key_material(
    bus: Bus, services: Any
) -> None:
    device = await enroll(bus, with_encryption_key=False)
    assert device.answer["key_material"] is None
    assert device.answer["policy"] == DEFAULTS
    err = await refused(
        bus, "offline_codes", ACME_TECH, tenant="acme", device_id=device.device_id, purpose="app"
    )
    assert err.status == 409 and "encryption key" in err.detail
