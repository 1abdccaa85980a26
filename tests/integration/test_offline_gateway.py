"""Offline routes over HTTP: the gateway forwards to approval-svc; a device enrolled over HTTP
opens its key material and verifies what the help desk is given."""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from epm_approval.app import DEFINITION as APPROVAL
from epm_domain.offline_codes import ResponseGrant, verify_access_code, verify_response
from epm_domain.sealed import new_private_key, open_device_keys
from epm_request.app import DEFINITION as REQUESTS
from epm_service.bus import Bus
from epm_service.runtime import start_service
from epm_service.settings import Settings

from tests.integration.test_gateway_api import (
    Gateway,
    assert_problem,
    gateway_settings,
    running_gateway,
)

__all__ = ["gateway_settings"]  # fixture
SHA = "cd" * 32


@pytest.fixture
async def stack(bus: Bus, gateway_settings: Settings) -> AsyncIterator[Gateway]:
    gateway_settings.master_key = base64.b64encode(secrets.token_bytes(32)).decode()
    approval = await start_service(APPROVAL, gateway_settings)
    requests = await start_service(REQUESTS, gateway_settings)
    assert gateway_settings.bootstrap_token_file is not None
    admin = gateway_settings.bootstrap_token_file.read_text().strip()
    try:
        async with running_gateway(gateway_settings, admin) as gw:
            yield gw
    finally:
        await requests.stop()
        await approval.stop()


async def test_help_desk_flow_over_http(stack: Gateway) -> None:
    gw = stack
    await gw.tenant("acme")
    await gw.tenant("globex")
    admin = (await gw.token("tenant_admin", "acme"))["token"]
    tech = (await gw.token("tenant_technician", "acme"))["token"]
    stranger = (await gw.token("tenant_admin", "globex"))["token"]

    r = await gw.post("/v1/tenants/acme/enrollment-tokens", {}, token=admin)
    assert r.status_code == 201, r.text
    private, public = new_private_key()
    signing = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    r = await gw.client.post(
        "/v1/agent/enroll",
        json={
            "enrollment_token": r.json()["token"],
            "public_key": base64.b64encode(signing).decode(),
            "hostname": "pc-7",
            "encryption_key": base64.b64encode(public).decode(),
        },
    )
    assert r.status_code == 201, r.text
    device_id = r.json()["device_id"]
    keys = open_device_keys(r.json()["key_material"], private, "acme", device_id)

    policy_path = "/v1/tenants/acme/offline-policy"
    assert (await gw.get(policy_path, tech)).json()["admin_codes"] is False
    wanted = {
        "challenge_response": True,
        "app_codes": True,
        "admin_codes": True,
        "self_service": False,
        "max_admin_minutes": 30,
    }
    r = await gw.client.put(policy_path, json=wanted, headers=gw.auth(admin))
    assert r.status_code == 200 and r.json()["max_admin_minutes"] == 30
    assert_problem(await gw.client.put(policy_path, json=wanted, headers=gw.auth(tech)), 403)
    assert_problem(await gw.get(policy_path, stranger), 404)

    device = f"/v1/tenants/acme/devices/{device_id}"
    r = await gw.post(
        f"{device}/offline-response",
        {"request_code": "314159", "grant": "admin", "minutes": 30},
        token=tech,
    )
    assert r.status_code == 200, r.text
    admin30 = ResponseGrant("admin", minutes=30)
    assert verify_response(
        keys.response, device_id, "314159", admin30, 1, r.json()["response_code"]
    )
    body = assert_problem(
        await gw.post(
            f"{device}/offline-response",
            {"request_code": "314159", "grant": "admin", "minutes": 60},
            token=tech,
        ),
        403,
    )
    assert "max_admin_minutes" in body["detail"]

    r = await gw.post(
        f"{device}/offline-codes", {"purpose": "app", "count": 2, "sha256": SHA}, tech
    )
    assert r.status_code == 201, r.text
    today = datetime.now(UTC).date()
    for c in r.json()["codes"]:
        assert verify_access_code(keys.access_code, device_id, c["code"], 1, today, sha256=SHA)
    assert_problem(await gw.post(f"{device}/offline-codes", {"purpose": "app"}, stranger), 404)
    r = await gw.delete(f"{device}/offline-codes", token=admin)
    assert r.status_code == 200 and r.json()["key_version"] == 2
