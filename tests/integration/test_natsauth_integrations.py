"""``GET /v1/integrations/nats`` on a gateway whose NATS requires JWTs: an integrator's creds
read its tenant's events and are refused another tenant's; revoking the token revokes them
at once (request-svc pushes the account JWT), also when request-svc was down at the time."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
from epm_events.streams import EVENTS
from epm_gateway.domain import new_token
from epm_service.bus import Bus
from epm_service.natsauth import read_creds, write_private
from epm_service.runtime import RunningService, start_service
from epm_service.settings import Settings
from nats.aio.client import Client, RawCredentials
from nats.js.api import ConsumerConfig, DeliverPolicy

from tests.certificates import issue_tls_files
from tests.conftest import AuthNats
from tests.integration.test_gateway_api import Gateway, running_gateway


def gateway_settings(nats_auth_server: AuthNats, tmp_path: Path, **more: Any) -> Settings:
    # what the gateway holds in production: the issuer without the revocation keys
    issuer = tmp_path / "issuer-gateway.json"
    write_private(issuer, nats_auth_server.keys.issuer().without_revocation().dump())
    return Settings(
        nats_url=nats_auth_server.url,
        nats_creds=nats_auth_server.service_creds("gateway"),
        nats_issuer=str(issuer),
        data_dir=tmp_path / "data",
        bootstrap_token_file=tmp_path / "admin-token",
        **more,
    )


@pytest.fixture
async def gateway(
    auth_bus: Bus, nats_auth_server: AuthNats, tmp_path: Path
) -> AsyncIterator[Gateway]:
    admin = new_token()
    token_file = tmp_path / "admin-token"
    token_file.write_text(admin + "\n")
    token_file.chmod(0o600)
    async with running_gateway(gateway_settings(nats_auth_server, tmp_path), admin) as gw:
        await gw.tenant("acme")
        await gw.tenant("globex")
        yield gw


async def test_an_integrator_gets_creds_that_read_its_tenant_only(gateway: Gateway) -> None:
    token = (await gateway.token("integrator", "acme"))["token"]
    answer = (await gateway.get("/v1/integrations/nats", token)).json()
    assert answer["stream"] == EVENTS.name
    assert answer["subjects"] == ["epm.evt.acme.>"]
    assert answer["ca"] is None  # no EPM_PUBLIC_NATS_CA: the system's CAs
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc).lower())

    nc = await nats.connect(
        answer["url"],
        user_credentials=RawCredentials(answer["creds"]),
        inbox_prefix=answer["inbox_prefix"],
        error_cb=on_error,
    )
    try:
        js = nc.jetstream(timeout=2)
        feed = await js.subscribe(
            "epm.evt.acme.>",
            stream=EVENTS.name,
            ordered_consumer=True,
            config=ConsumerConfig(name="crm-feed"),
        )
        first = await feed.next_msg(timeout=5)
        assert first.subject.startswith("epm.evt.acme.")
        await feed.unsubscribe()
        with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
            await js.subscribe(
                "epm.evt.globex.>",
                stream=EVENTS.name,
                ordered_consumer=True,
                config=ConsumerConfig(name="peek"),
            )
        deadline = time.monotonic() + 5
        while not any("permissions violation" in e for e in errors):
            assert time.monotonic() < deadline, errors
            await nc.flush()
    finally:
        await nc.close()


async def test_the_readmes_nats_py_recipe_resumes_after_the_last_sequence_read(
    gateway: Gateway,
) -> None:
    """README.md, "Integrators": an ordered consumer with a name, started after the last
    stream sequence the integrator kept (acme has its TenantCreated and TokenIssued)."""
    token = (await gateway.token("integrator", "acme"))["token"]
    a = (await gateway.get("/v1/integrations/nats", token)).json()
    nc = await nats.connect(
        a["url"], user_credentials=RawCredentials(a["creds"]), inbox_prefix=a["inbox_prefix"]
    )

    async def first_after(last_seq: int, name: str) -> int:
        feed = await nc.jetstream().subscribe(
            a["subjects"][0],
            stream=a["stream"],
            ordered_consumer=True,
            config=ConsumerConfig(
                name=name,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=last_seq + 1,
            ),
        )
        try:
            msg = await feed.next_msg(timeout=5)
            assert msg.subject.startswith("epm.evt.acme.")
            return int(msg.metadata.sequence.stream)
        finally:
            await feed.unsubscribe()

    try:
        kept = await first_after(0, "siem-feed")
        assert await first_after(kept, "siem-feed-again") > kept
    finally:
        await nc.close()


async def test_an_integrator_is_handed_the_nats_ca_the_operator_publishes(
    auth_bus: Bus, nats_auth_server: AuthNats, tmp_path: Path
) -> None:
    ca = issue_tls_files(tmp_path / "tls").ca
    admin = new_token()
    (tmp_path / "admin-token").write_text(admin + "\n")
    (tmp_path / "admin-token").chmod(0o600)
    settings = gateway_settings(nats_auth_server, tmp_path, public_nats_ca=ca)
    async with running_gateway(settings, admin) as gw:
        await gw.tenant("acme")
        token = (await gw.token("integrator", "acme"))["token"]
        answer = (await gw.get("/v1/integrations/nats", token)).json()
    assert answer["ca"] == ca.read_text()
    assert answer["creds"]


async def test_only_integrator_tokens_get_nats_creds(gateway: Gateway) -> None:
    technician = (await gateway.token("tenant_technician", "acme"))["token"]
    refused = await gateway.get("/v1/integrations/nats", technician)
    assert refused.status_code == 403
    assert "integrator" in refused.json()["detail"]
    everyone = (await gateway.token("integrator", None))["token"]
    answer = (await gateway.get("/v1/integrations/nats", everyone)).json()
    assert answer["subjects"] == ["epm.evt.>"]


def request_svc_settings(nats_auth_server: AuthNats, tmp_path: Path) -> Settings:
    return Settings(
        nats_url=nats_auth_server.url,
        nats_creds=nats_auth_server.service_creds("request-svc"),
        nats_issuer=nats_auth_server.issuer_file(),  # the full issuer: it pushes revocations
        data_dir=tmp_path / "request-svc",
    )


@pytest.fixture
async def request_svc(
    gateway: Gateway, nats_auth_server: AuthNats, tmp_path: Path
) -> AsyncIterator[RunningService]:
    from epm_request.app import DEFINITION

    running = await start_service(DEFINITION, request_svc_settings(nats_auth_server, tmp_path))
    yield running
    await running.stop()


async def _quiet(exc: Exception) -> None:
    """A refusal is what these tests expect."""


async def connect_integrator(answer: dict[str, Any]) -> Client:
    return await nats.connect(
        answer["url"],
        user_credentials=RawCredentials(answer["creds"]),
        inbox_prefix=answer["inbox_prefix"],
        allow_reconnect=False,
        connect_timeout=3,
        error_cb=_quiet,
    )


async def refused(answer: dict[str, Any]) -> bool:
    try:
        nc = await connect_integrator(answer)
    except (nats.errors.Error, TimeoutError, OSError):
        return True
    connected = nc.is_connected
    await nc.close()
    return not connected


async def reads(nc: Client, tenant: str) -> bool:
    """Whether these creds read the tenant's events (a named consumer: the filter is then in
    the create subject the creds allow; a new name each time)."""
    feed = await nc.jetstream(timeout=2).subscribe(
        f"epm.evt.{tenant}.>",
        stream=EVENTS.name,
        ordered_consumer=True,
        config=ConsumerConfig(name=f"feed-{secrets.token_hex(4)}"),
    )
    try:
        return (await feed.next_msg(timeout=5)).subject.startswith(f"epm.evt.{tenant}.")
    finally:
        await feed.unsubscribe()


async def eventually(what: str, check: Callable[[], Awaitable[bool]], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_revoking_an_integrator_token_revokes_its_nats_creds_at_once(
    gateway: Gateway, request_svc: RunningService
) -> None:
    revoked = await gateway.token("integrator", "acme")
    kept = await gateway.token("integrator", "acme")
    first = (await gateway.get("/v1/integrations/nats", revoked["token"])).json()
    second = (await gateway.get("/v1/integrations/nats", revoked["token"])).json()
    other = (await gateway.get("/v1/integrations/nats", kept["token"])).json()
    # every creds of one token are one NATS user (what the revocation names)
    assert read_creds(first["creds"])[1].public == read_creds(second["creds"])[1].public
    assert read_creds(first["creds"])[1].public != read_creds(other["creds"])[1].public
    reading = await connect_integrator(first)
    assert await reads(reading, "acme")

    answer = await gateway.delete(f"/v1/tokens/{revoked['id']}")
    assert answer.status_code == 204, answer.text

    # refused from the moment the DELETE returned: no waiting
    assert await refused(first) and await refused(second)

    async def dropped() -> bool:
        return not reading.is_connected

    await eventually("NATS to drop the revoked integrator's connection", dropped, timeout=5)
    assert (await gateway.get("/v1/integrations/nats", revoked["token"])).status_code == 401
    still = await connect_integrator(other)  # another integrator of the tenant is untouched
    try:
        assert await reads(still, "acme")
    finally:
        await still.close()
    # revoking again is fine, and pushes again
    assert (await gateway.delete(f"/v1/tokens/{revoked['id']}")).status_code == 204


async def test_a_revocation_made_while_request_svc_is_down_reaches_nats_when_it_starts(
    gateway: Gateway, nats_auth_server: AuthNats, tmp_path: Path
) -> None:
    from epm_request.app import DEFINITION

    token = await gateway.token("integrator", None)
    creds = (await gateway.get("/v1/integrations/nats", token["token"])).json()
    assert not await refused(creds)

    answer = await gateway.delete(f"/v1/tokens/{token['id']}")
    assert answer.status_code == 503, answer.text
    assert "NATS credentials are not revoked yet" in answer.json()["detail"]
    assert (await gateway.get("/v1/integrations/nats", token["token"])).status_code == 401
    assert not await refused(creds)  # nobody could push the revocation yet

    running = await start_service(DEFINITION, request_svc_settings(nats_auth_server, tmp_path))
    try:
        await eventually("request-svc to push the revocation at its start", lambda: refused(creds))
    finally:
        await running.stop()
