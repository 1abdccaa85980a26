"""``GET /v1/integrations/nats`` on a gateway whose NATS requires JWTs: an integrator's creds
read its tenant's events and are refused another tenant's."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import nats.errors
import pytest
from epm_events.streams import EVENTS
from epm_gateway.domain import new_token
from epm_service.bus import Bus
from epm_service.settings import Settings
from nats.aio.client import RawCredentials
from nats.js.api import ConsumerConfig

from tests.conftest import AuthNats
from tests.integration.test_gateway_api import Gateway, running_gateway


@pytest.fixture
async def gateway(
    auth_bus: Bus, nats_auth_server: AuthNats, tmp_path: Path
) -> AsyncIterator[Gateway]:
    admin = new_token()
    token_file = tmp_path / "admin-token"
    token_file.write_text(admin + "\n")
    token_file.chmod(0o600)
    settings = Settings(
        nats_url=nats_auth_server.url,
        nats_creds=nats_auth_server.service_creds("gateway"),
        nats_issuer=nats_auth_server.issuer_file(),
        data_dir=tmp_path / "data",
        bootstrap_token_file=token_file,
    )
    async with running_gateway(settings, admin) as gw:
        await gw.tenant("acme")
        await gw.tenant("globex")
        yield gw


async def test_an_integrator_gets_creds_that_read_its_tenant_only(gateway: Gateway) -> None:
    token = (await gateway.token("integrator", "acme"))["token"]
    answer = (await gateway.get("/v1/integrations/nats", token)).json()
    assert answer["stream"] == EVENTS.name
    assert answer["subjects"] == ["epm.evt.acme.>"]
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


async def test_only_integrator_tokens_get_nats_creds(gateway: Gateway) -> None:
    technician = (await gateway.token("tenant_technician", "acme"))["token"]
    refused = await gateway.get("/v1/integrations/nats", technician)
    assert refused.status_code == 403
    assert "integrator" in refused.json()["detail"]
    everyone = (await gateway.token("integrator", None))["token"]
    answer = (await gateway.get("/v1/integrations/nats", everyone)).json()
    assert answer["subjects"] == ["epm.evt.>"]
