"""Rotating EPM_MASTER_KEY on a real nats-server: approval-svc (tenant keys for offline codes)
and notify-svc (channel secrets) keep opening what the old key sealed, given it as
EPM_MASTER_KEY_PREVIOUS, and seal everything new under the new key."""

from __future__ import annotations

import base64
import contextlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from epm_approval.app import DEFINITION as APPROVAL
from epm_domain.offline_codes import ResponseGrant, verify_response
from epm_events.catalog import TenantCreated
from epm_notify.app import secret_box
from epm_request.app import DEFINITION as REQUESTS
from epm_service.bus import Bus
from epm_service.publisher import EventPublisher
from epm_service.runtime import start_service
from epm_service.secretbox import SecretBox, key_id, parse_master_key
from epm_service.settings import Settings

from tests.integration.test_offline_codes_service import events_named
from tests.integration.test_offline_policy import ACME_TECH, Device, enroll, refused
from tests.integration.test_offline_policy import ask as approval

SHA = "ab" * 32


def new_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def kid(master_key: str) -> str:
    return key_id(parse_master_key(master_key))


@contextlib.asynccontextmanager
async def services(settings: Settings) -> AsyncIterator[None]:
    """approval-svc and request-svc, each with its own fresh data dir (so a restart rebuilds)."""
    approval = await start_service(APPROVAL, settings)
    requests = await start_service(REQUESTS, settings)
    try:
        yield
    finally:
        await requests.stop()
        await approval.stop()


def rotated(settings: Settings, data_dir: Path, current: str, *previous: str) -> Settings:
    return settings.model_copy(
        update={
            "data_dir": data_dir,
            "master_key": current,
            "master_key_previous": ",".join(previous) or None,
        }
    )


async def response_verifies(bus: Bus, device: Device) -> bool:
    answer = await approval(
        bus,
        "offline_response",
        ACME_TECH,
        tenant=device.tenant,
        device_id=device.device_id,
        request_code="123456",
        grant="app",
        sha256=SHA,
    )
    grant = ResponseGrant("app", sha256=SHA)
    return verify_response(
        device.keys().response, device.device_id, "123456", grant, 1, answer["response_code"]
    )


async def test_after_rotation_old_secrets_open_and_new_ones_use_the_new_key(
    bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    pub = EventPublisher(bus.js, "/epm/gateway")
    for tenant in ("acme", "globex"):
        await pub.append(tenant, [TenantCreated(tenant_id=tenant, name=tenant, created_by="t")], 0)
    key_a, key_b = new_key(), new_key()

    async with services(rotated(settings, tmp_path / "a", key_a)):
        acme_device = await enroll(bus, "acme")  # acme's tenant key is sealed under A
        assert await response_verifies(bus, acme_device)

    # B alone cannot open what A sealed, and says which key it needs
    async with services(rotated(settings, tmp_path / "b-only", key_b)):
        err = await refused(
            bus,
            "offline_response",
            ACME_TECH,
            tenant="acme",
            device_id=acme_device.device_id,
            request_code="123456",
            grant="app",
            sha256=SHA,
        )
        assert err.status == 503 and kid(key_a) in err.detail

    # B with A as previous: a rebuilt projection opens A's ciphertext, new keys are sealed by B
    async with services(rotated(settings, tmp_path / "b", key_b, key_a)):
        assert await response_verifies(bus, acme_device)
        second_acme = await enroll(bus, "acme")  # key material derived from A's tenant key
        assert await response_verifies(bus, second_acme)
        await enroll(bus, "globex")  # globex's first tenant key: sealed under B
        sealed = {
            e["tenant_id"]: e["ciphertext"] for e in await events_named(bus, "TenantKeyCreated")
        }
        assert sealed["acme"].startswith(kid(key_a) + ":")
        assert sealed["globex"].startswith(kid(key_b) + ":")
        assert key_a not in str(sealed) and key_b not in str(sealed)


@pytest.mark.parametrize("previous", ["{a}", " {a} , {c} ", "{c},{a}"])
def test_notify_svc_opens_channel_secrets_of_every_previous_key(
    settings: Settings, previous: str
) -> None:
    key_a, key_b, key_c = new_key(), new_key(), new_key()
    sealed_by_a = SecretBox.from_master_key(key_a).seal_text("whsec_x", "notify-svc:channel:ch-1")
    settings = settings.model_copy(
        update={"master_key": key_b, "master_key_previous": previous.format(a=key_a, c=key_c)}
    )
    box = secret_box(_Ctx(settings))  # type: ignore[arg-type]
    assert box.open_text(sealed_by_a, "notify-svc:channel:ch-1") == "whsec_x"
    assert box.seal_text("new", "ctx").startswith(kid(key_b) + ":")
    assert box.key_id == kid(key_b)


class _Ctx:
    """The one attribute of a ServiceContext that secret_box reads."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings


def test_previous_keys_setting_reads_a_comma_separated_list(monkeypatch: Any) -> None:
    monkeypatch.setenv("EPM_MASTER_KEY_PREVIOUS", "k1, k2,,")
    assert Settings().previous_master_keys == ["k1", "k2"]
    monkeypatch.delenv("EPM_MASTER_KEY_PREVIOUS")
    assert Settings().previous_master_keys == []


def test_an_unusable_previous_key_stops_the_box_with_a_message() -> None:
    with pytest.raises(ValueError, match="EPM_MASTER_KEY_PREVIOUS"):
        SecretBox.from_master_key(new_key(), ["not-a-key"])
