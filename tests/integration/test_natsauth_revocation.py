"""Per-device NATS users through the real request-svc on a nats-server with JWT auth:
enrollment hands out creds that work, revocation pushes the account JWT and the server
drops the device and refuses it from then on."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
from epm_events.catalog import TenantCreated
from epm_events.subjects import device_inbox_prefix
from epm_service.bus import Bus, connect
from epm_service.natsauth import CLAIMS_UPDATE, read_creds, service_inbox_prefix
from epm_service.principal import Principal
from epm_service.publisher import EventPublisher
from epm_service.rpc import call
from epm_service.runtime import RunningService, start_service
from epm_service.settings import Settings
from nats.aio.client import Client, RawCredentials

from tests.conftest import AuthNats

ADMIN = Principal(token_id="t0", name="root", role="msp_admin", tenant=None)


async def eventually(what: str, check: Callable[[], Awaitable[Any]], timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def gateway_bus(auth_bus: Bus, nats_auth_server: AuthNats) -> AsyncIterator[Bus]:
    """The gateway's NATS user: it creates tenants and calls request-svc."""
    settings = Settings(
        nats_url=nats_auth_server.url, nats_creds=nats_auth_server.service_creds("gateway")
    )
    bus = await connect(settings, name="gateway", inbox_prefix=service_inbox_prefix("gateway"))
    await EventPublisher(bus.js, "/epm/gateway").append(
        "acme", [TenantCreated(tenant_id="acme", name="Acme", created_by="test")], 0
    )
    yield bus
    await bus.close()


@pytest.fixture
async def request_svc(
    gateway_bus: Bus, nats_auth_server: AuthNats, tmp_path: Path
) -> AsyncIterator[RunningService]:
    from epm_request.app import DEFINITION

    settings = Settings(
        nats_url=nats_auth_server.url,
        nats_creds=nats_auth_server.service_creds("request-svc"),
        nats_issuer=nats_auth_server.issuer_file(),
        data_dir=tmp_path / "data",
    )
    running = await start_service(DEFINITION, settings)
    yield running
    await running.stop()


async def enroll(bus: Bus) -> dict[str, Any]:
    token = await call(bus.nc, "request-svc", "create_enrollment_token", {"tenant": "acme"}, ADMIN)
    key = base64.b64encode(b"k" * 32).decode()
    args = {"enrollment_token": token["token"], "public_key": key, "hostname": "pc"}
    answer: dict[str, Any] = await call(bus.nc, "request-svc", "enroll", args, ADMIN)
    return answer


async def connect_device(url: str, answer: dict[str, Any]) -> Client:
    return await nats.connect(
        url,
        user_credentials=RawCredentials(answer["nats"]["creds"]),
        inbox_prefix=answer["inbox_prefix"],
        allow_reconnect=False,
        connect_timeout=3,
        error_cb=_quiet,
    )


async def device_refused(url: str, answer: dict[str, Any]) -> bool:
    try:
        nc = await connect_device(url, answer)
    except (nats.errors.Error, TimeoutError, OSError):
        return True
    connected = nc.is_connected
    await nc.close()
    return not connected


async def test_enrollment_gives_the_device_its_own_working_creds(
    gateway_bus: Bus, request_svc: RunningService, nats_auth_server: AuthNats
) -> None:
    answer = await enroll(gateway_bus)
    device = answer["device_id"]
    assert answer["inbox_prefix"] == device_inbox_prefix("acme", device)
    assert answer["nats"]["user"] is None and answer["nats"]["password"] is None
    jwt, _ = read_creds(answer["nats"]["creds"])
    other = await enroll(gateway_bus)
    assert read_creds(other["nats"]["creds"])[0] != jwt  # one user per device

    nc = await connect_device(nats_auth_server.url, answer)
    try:
        ack = await nc.jetstream().publish(f"epm.agent.acme.{device}.Hello", b"{}")
        assert ack.stream == "EPM_AGENT"
    finally:
        await nc.close()


async def test_a_revoked_device_is_disconnected_and_cannot_connect_again(
    gateway_bus: Bus, request_svc: RunningService, nats_auth_server: AuthNats
) -> None:
    answer = await enroll(gateway_bus)
    kept = await enroll(gateway_bus)
    nc = await connect_device(nats_auth_server.url, answer)
    await call(
        gateway_bus.nc,
        "request-svc",
        "revoke_device",
        {"tenant": "acme", "device_id": answer["device_id"]},
        ADMIN,
    )

    async def dropped() -> bool:
        return not nc.is_connected

    await eventually("the server to drop the revoked device", dropped)
    assert await device_refused(nats_auth_server.url, answer)
    # the other device of the tenant is untouched
    still = await connect_device(nats_auth_server.url, kept)
    assert still.is_connected
    await still.close()


async def test_revoking_again_restores_a_revocation_the_servers_lost(
    gateway_bus: Bus, request_svc: RunningService, nats_auth_server: AuthNats
) -> None:
    answer = await enroll(gateway_bus)
    args = {"tenant": "acme", "device_id": answer["device_id"]}
    await call(gateway_bus.nc, "request-svc", "revoke_device", args, ADMIN)
    assert await device_refused(nats_auth_server.url, answer)

    # The resolver loses it (a restored volume, say): the account JWT without revocations.
    issuer = nats_auth_server.keys.issuer()
    assert issuer.system_creds is not None
    sys_nc = await nats.connect(
        nats_auth_server.url, user_credentials=RawCredentials(issuer.system_creds)
    )
    try:
        await sys_nc.request(CLAIMS_UPDATE, issuer.account_jwt().encode(), timeout=5)
    finally:
        await sys_nc.close()
    back = await connect_device(nats_auth_server.url, answer)
    assert back.is_connected
    await back.close()

    await call(gateway_bus.nc, "request-svc", "revoke_device", args, ADMIN)
    assert await device_refused(nats_auth_server.url, answer)


async def _quiet(exc: Exception) -> None:
    """A refusal is what these tests expect."""
