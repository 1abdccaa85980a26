"""The gateway against a real nats-server: HTTP in-process (ASGI), commands over NATS."""

from __future__ import annotations

import base64
import contextlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from epm_approval.app import DEFINITION as APPROVALS
from epm_events.codec import decode_event
from epm_events.streams import EVENTS
from epm_gateway.api import create_app
from epm_gateway.app import start_gateway
from epm_gateway.domain import bootstrap_token_id, hash_token, new_token
from epm_notify.app import DEFINITION as NOTIFY
from epm_request.app import DEFINITION as REQUESTS
from epm_service.bus import Bus
from epm_service.principal import SYSTEM
from epm_service.rpc import call
from epm_service.runtime import RunningService, ServiceDefinition, start_service
from epm_service.settings import Settings

from tests.conftest import delete_streams
from tests.integration.test_request_svc import Device, eventually

PROBLEM = "application/problem+json"


@dataclass
class Gateway:
    service: RunningService
    client: httpx.AsyncClient
    admin: str  # the bootstrap msp_admin token

    def auth(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def get(self, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
        return await self.client.get(path, headers=self.auth(token or self.admin), **kw)

    async def post(
        self, path: str, body: dict[str, Any], token: str | None = None
    ) -> httpx.Response:
        return await self.client.post(path, json=body, headers=self.auth(token or self.admin))

    async def delete(self, path: str, token: str | None = None) -> httpx.Response:
        return await self.client.delete(path, headers=self.auth(token or self.admin))

    async def tenant(self, tenant: str) -> None:
        r = await self.post("/v1/tenants", {"id": tenant, "name": tenant.title()})
        assert r.status_code == 201, r.text

    async def token(self, role: str, tenant: str | None, by: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"role": role, "name": f"{role} of {tenant or 'msp'}"}
        if tenant is not None:
            body["tenant"] = tenant
        r = await self.post("/v1/tokens", body, token=by)
        assert r.status_code == 201, r.text
        out: dict[str, Any] = r.json()
        return out


@contextlib.asynccontextmanager
async def running_gateway(settings: Settings, admin: str) -> AsyncIterator[Gateway]:
    service = await start_gateway(settings)
    await service.ctx.projector("directory").wait_caught_up(10)
    transport = httpx.ASGITransport(app=create_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        try:
            yield Gateway(service, client, admin)
        finally:
            await service.stop()


@pytest.fixture
def gateway_settings(settings: Settings) -> Settings:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    token_file = settings.data_dir / "admin-token"
    token_file.write_text(new_token() + "\n")
    token_file.chmod(0o600)
    settings.bootstrap_token_file = token_file
    return settings


@pytest.fixture
async def gw(bus: Bus, gateway_settings: Settings) -> AsyncIterator[Gateway]:
    assert gateway_settings.bootstrap_token_file is not None
    admin = gateway_settings.bootstrap_token_file.read_text().strip()
    async with running_gateway(gateway_settings, admin) as g:
        yield g


def assert_problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = r.json()
    assert {"type", "title", "status", "detail"} <= set(body)
    assert body["status"] == status
    assert body["detail"]
    return body


# --- authentication ----------------------------------------------------------------


async def test_bootstrap_token_is_an_msp_admin(gw: Gateway) -> None:
    r = await gw.get("/v1/tenants")
    assert r.status_code == 200, r.text
    assert r.json() == {"items": []}
    await gw.tenant("acme")  # only an msp_admin may


async def test_request_without_token_is_401_with_a_challenge(gw: Gateway) -> None:
    r = await gw.client.get("/v1/tenants")
    body = assert_problem(r, 401)
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert "Authorization: Bearer" in body["detail"]


async def test_unknown_token_is_401(gw: Gateway) -> None:
    r = await gw.get("/v1/tenants", token=new_token())
    assert_problem(r, 401)
    assert 'error="invalid_token"' in r.headers["www-authenticate"]


async def test_revoked_token_is_refused(gw: Gateway) -> None:
    await gw.tenant("acme")
    issued = await gw.token("tenant_technician", "acme")
    assert (await gw.get("/v1/tenants", token=issued["token"])).status_code == 200

    r = await gw.delete(f"/v1/tokens/{issued['id']}")
    assert r.status_code == 204, r.text

    assert_problem(await gw.get("/v1/tenants", token=issued["token"]), 401)
    assert (await gw.delete(f"/v1/tokens/{issued['id']}")).status_code == 204  # idempotent


async def test_a_token_may_revoke_itself(gw: Gateway) -> None:
    await gw.tenant("acme")
    issued = await gw.token("tenant_technician", "acme")
    r = await gw.delete(f"/v1/tokens/{issued['id']}", token=issued["token"])
    assert r.status_code == 204, r.text
    assert_problem(await gw.get("/v1/tenants", token=issued["token"]), 401)


async def test_revoking_an_unknown_token_is_404(gw: Gateway) -> None:
    assert_problem(await gw.delete("/v1/tokens/tok-nope"), 404)


# --- tenants ---------------------------------------------------------------------------


async def test_created_tenant_is_listed_right_after_creation(gw: Gateway) -> None:
    r = await gw.post("/v1/tenants", {"id": "acme", "name": "Acme Corp"})
    assert r.status_code == 201, r.text
    assert r.json() == {"id": "acme", "name": "Acme Corp"}
    r = await gw.get("/v1/tenants")
    assert r.json()["items"] == [{"id": "acme", "name": "Acme Corp"}]


async def test_creating_an_existing_tenant_is_a_conflict(gw: Gateway) -> None:
    await gw.tenant("acme")
    body = assert_problem(await gw.post("/v1/tenants", {"id": "acme", "name": "Other"}), 409)
    assert "acme" in body["detail"]
    assert (await gw.get("/v1/tenants")).json()["items"] == [{"id": "acme", "name": "Acme"}]


@pytest.mark.parametrize("bad", ["Acme", "acme.corp", "-x", "a*", "a" * 64])
async def test_bad_tenant_id_is_a_422_problem_naming_the_rule(gw: Gateway, bad: str) -> None:
    body = assert_problem(await gw.post("/v1/tenants", {"id": bad, "name": "X"}), 422)
    assert "lowercase letters, digits" in body["detail"]


async def test_global_tenant_cannot_be_created(gw: Gateway) -> None:
    body = assert_problem(await gw.post("/v1/tenants", {"id": "_global", "name": "X"}), 422)
    assert "reserved" in body["detail"]


async def test_missing_fields_are_a_422_problem(gw: Gateway) -> None:
    body = assert_problem(await gw.post("/v1/tenants", {"id": "acme"}), 422)
    assert "name" in body["detail"]


async def test_tenants_are_paged_with_a_cursor(gw: Gateway) -> None:
    for i in range(5):
        await gw.tenant(f"t{i}")
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await gw.get("/v1/tenants", params=params)).json()
        seen += [t["id"] for t in page["items"]]
        cursor = page.get("next_cursor")
        if cursor is None:
            break
    assert seen == ["t0", "t1", "t2", "t3", "t4"]


async def test_a_garbled_cursor_is_a_422_problem(gw: Gateway) -> None:
    assert_problem(await gw.get("/v1/tenants", params={"cursor": "%%%"}), 422)


# --- tenant walls -------------------------------------------------------------------------


async def test_tenant_admin_sees_only_its_own_tenant(gw: Gateway) -> None:
    await gw.tenant("acme")
    await gw.tenant("globex")
    admin_a = await gw.token("tenant_admin", "acme")
    r = await gw.get("/v1/tenants", token=admin_a["token"])
    assert r.json()["items"] == [{"id": "acme", "name": "Acme"}]


async def test_tenant_admin_cannot_reach_another_tenant(gw: Gateway) -> None:
    await gw.tenant("acme")
    await gw.tenant("globex")
    admin_a = await gw.token("tenant_admin", "acme")
    tech_b = await gw.token("tenant_technician", "globex")

    body = {"role": "tenant_technician", "tenant": "globex", "name": "x"}
    existing = assert_problem(await gw.post("/v1/tokens", body, token=admin_a["token"]), 404)
    body = {"role": "tenant_technician", "tenant": "initech", "name": "x"}
    missing = assert_problem(await gw.post("/v1/tokens", body, token=admin_a["token"]), 404)
    assert existing["detail"].replace("globex", "initech") == missing["detail"]  # nothing leaks

    assert_problem(await gw.delete(f"/v1/tokens/{tech_b['id']}", token=admin_a["token"]), 404)
    assert (await gw.get("/v1/tenants", token=tech_b["token"])).status_code == 200


async def test_tenant_admin_cannot_issue_msp_roles(gw: Gateway) -> None:
    await gw.tenant("acme")
    admin_a = await gw.token("tenant_admin", "acme")
    for role in ("msp_admin", "msp_technician"):
        r = await gw.post("/v1/tokens", {"role": role, "name": "x"}, token=admin_a["token"])
        assert_problem(r, 403)


async def test_tenant_admin_issues_tenant_tokens_in_its_tenant(gw: Gateway) -> None:
    await gw.tenant("acme")
    admin_a = await gw.token("tenant_admin", "acme")
    tech = await gw.token("tenant_technician", None, by=admin_a["token"])  # defaults to acme
    assert tech["tenant"] == "acme"
    r = await gw.get("/v1/tenants", token=tech["token"])
    assert r.json()["items"] == [{"id": "acme", "name": "Acme"}]
    assert (await gw.delete(f"/v1/tokens/{tech['id']}", token=admin_a["token"])).status_code == 204


async def test_tenant_admin_cannot_create_tenants(gw: Gateway) -> None:
    await gw.tenant("acme")
    admin_a = await gw.token("tenant_admin", "acme")
    r = await gw.post("/v1/tenants", {"id": "mine", "name": "Mine"}, token=admin_a["token"])
    assert_problem(r, 403)


async def test_technician_cannot_issue_tokens(gw: Gateway) -> None:
    await gw.tenant("acme")
    tech = await gw.token("tenant_technician", "acme")
    body = {"role": "tenant_technician", "name": "x"}
    assert_problem(await gw.post("/v1/tokens", body, token=tech["token"]), 403)


async def test_refusals_name_roles_with_the_article_they_need(gw: Gateway) -> None:
    await gw.tenant("acme")
    integrator = (await gw.token("integrator", "acme"))["token"]
    body = {"role": "integrator", "tenant": "acme", "name": "x"}
    detail = assert_problem(await gw.post("/v1/tokens", body, token=integrator), 403)["detail"]
    assert detail.startswith("an integrator may not issue an integrator token here")
    body = {"role": "tenant_admin", "tenant": "acme", "name": "x"}
    detail = assert_problem(await gw.post("/v1/tokens", body, token=integrator), 403)["detail"]
    assert detail.startswith("an integrator may not issue a tenant_admin token here")


async def test_token_for_an_unknown_tenant_is_404(gw: Gateway) -> None:
    body = {"role": "tenant_admin", "tenant": "nobody", "name": "x"}
    body_out = assert_problem(await gw.post("/v1/tokens", body), 404)
    assert "POST /v1/tenants" in body_out["detail"]


async def test_msp_role_with_a_tenant_is_a_422(gw: Gateway) -> None:
    await gw.tenant("acme")
    body = {"role": "msp_technician", "tenant": "acme", "name": "x"}
    assert_problem(await gw.post("/v1/tokens", body), 422)


# --- commands over NATS ------------------------------------------------------------------


async def test_issue_token_over_nats_returns_the_token_once(gw: Gateway) -> None:
    result = await call(
        gw.service.ctx.bus.nc,
        "gateway",
        "issue_token",
        {"role": "integrator", "name": "siem"},
        SYSTEM,
    )
    assert result["token"].startswith("epm_")
    await gw.service.ctx.projector("directory").wait_for(result["seq"])
    assert (await gw.get("/v1/tenants", token=result["token"])).status_code == 200


# --- operations and contracts --------------------------------------------------------------


async def test_readyz_is_200_once_ready(gw: Gateway) -> None:
    r = await gw.client.get("/readyz")
    assert r.status_code == 200, r.text
    assert (await gw.client.get("/healthz")).json() == {"status": "ok"}


async def test_metrics_are_served(gw: Gateway) -> None:
    await gw.get("/v1/tenants")
    r = await gw.client.get("/metrics")
    assert r.status_code == 200
    assert "epm_gateway_http_requests_total" in r.text


async def test_metrics_and_readiness_are_not_answered_through_a_proxy(gw: Gateway) -> None:
    """The Ingress adds X-Forwarded-For: what comes through it is the internet's."""
    for headers in ({"X-Forwarded-For": "203.0.113.7"}, {"Forwarded": "for=203.0.113.7"}):
        for path in ("/metrics", "/readyz"):
            r = await gw.client.get(path, headers=headers)
            assert r.status_code == 404, (path, headers)
            assert r.headers["content-type"].startswith("application/problem+json")
        assert (await gw.client.get("/healthz", headers=headers)).status_code == 200


async def test_contracts_are_served(gw: Gateway) -> None:
    openapi = (await gw.client.get("/openapi.json")).json()
    assert {"/v1/tenants", "/v1/tokens", "/v1/tokens/{token_id}"} <= set(openapi["paths"])
    asyncapi = (await gw.client.get("/asyncapi.json")).json()
    assert asyncapi["asyncapi"].startswith("3.")
    assert "TenantCreated" in asyncapi["components"]["messages"]
    assert "<title>EPM console</title>" in (await gw.client.get("/")).text


async def test_unknown_path_is_a_404_problem(gw: Gateway) -> None:
    body = assert_problem(await gw.client.get("/v1/nothing-here"), 404)
    assert "/openapi.json" in body["detail"]


async def test_every_event_is_a_cloudevent_whose_msg_id_is_its_id(gw: Gateway, bus: Bus) -> None:
    await gw.tenant("acme")
    issued = await gw.token("tenant_admin", "acme")
    await gw.token("msp_technician", None)
    await gw.delete(f"/v1/tokens/{issued['id']}")

    info = await bus.js.stream_info(EVENTS.name)
    names = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await bus.js.get_msg(EVENTS.name, seq)
        env, _ = decode_event(msg.data or b"")
        assert msg.headers is not None
        assert msg.headers["Nats-Msg-Id"] == env.id
        assert orjson.loads(msg.data or b"")["specversion"] == "1.0"
        names.append(env.event_name)
        if env.event_name == "TokenIssued":
            assert issued["token"].encode() not in (msg.data or b"")
    assert names == ["TokenIssued", "TenantCreated", "TokenIssued", "TokenIssued", "TokenRevoked"]


# --- restarts ----------------------------------------------------------------------------


async def test_restart_without_its_database_still_knows_tenants_and_tokens(
    bus: Bus, gateway_settings: Settings
) -> None:
    assert gateway_settings.bootstrap_token_file is not None
    admin = gateway_settings.bootstrap_token_file.read_text().strip()
    async with running_gateway(gateway_settings, admin) as gw:
        await gw.tenant("acme")
        kept = await gw.token("tenant_admin", "acme")
        gone = await gw.token("tenant_technician", "acme")
        assert (await gw.delete(f"/v1/tokens/{gone['id']}")).status_code == 204

    files = list(gateway_settings.data_dir.glob("gateway-*.sqlite*"))
    assert files
    for f in files:
        f.unlink()

    async with running_gateway(gateway_settings, admin) as gw:
        assert (await gw.get("/v1/tenants")).json()["items"] == [{"id": "acme", "name": "Acme"}]
        r = await gw.get("/v1/tenants", token=kept["token"])
        assert r.json()["items"] == [{"id": "acme", "name": "Acme"}]
        assert_problem(await gw.get("/v1/tenants", token=gone["token"]), 401)
        assert_problem(await gw.post("/v1/tenants", {"id": "acme", "name": "Again"}), 409)


async def test_bootstrap_token_is_recorded_once_across_restarts(
    bus: Bus, gateway_settings: Settings
) -> None:
    assert gateway_settings.bootstrap_token_file is not None
    admin = gateway_settings.bootstrap_token_file.read_text().strip()
    for _ in range(2):
        async with running_gateway(gateway_settings, admin) as gw:
            assert (await gw.get("/v1/tenants")).status_code == 200
    boot_id = bootstrap_token_id(hash_token(admin))
    info = await bus.js.stream_info(EVENTS.name)
    assert info.state.messages == 1
    msg = await bus.js.get_msg(EVENTS.name, info.state.last_seq)
    assert msg.subject == f"epm.evt._global.token.{boot_id}.TokenIssued"


async def test_readyz_is_503_with_a_reason_when_streams_are_missing(gw: Gateway, bus: Bus) -> None:
    await delete_streams(bus)
    r = await gw.client.get("/readyz")
    assert r.status_code == 503
    assert "epm streams apply" in r.json()["reason"]


# --- replicas ----------------------------------------------------------------------------


async def test_replicas_answer_alike_right_after_each_others_writes(
    bus: Bus, gateway_settings: Settings, tmp_path: Path
) -> None:
    assert gateway_settings.bootstrap_token_file is not None
    admin = gateway_settings.bootstrap_token_file.read_text().strip()
    other = gateway_settings.model_copy(update={"data_dir": tmp_path / "replica-b"})
    async with (
        running_gateway(gateway_settings, admin) as a,
        running_gateway(other, admin) as b,
    ):
        for first, second in ((a, b), (b, a)):
            tenant = f"t-{id(first)}"
            await first.tenant(tenant)
            issued = await second.token("tenant_admin", tenant)
            assert (await first.get("/v1/tenants", token=issued["token"])).status_code == 200
            assert (await first.delete(f"/v1/tokens/{issued['id']}")).status_code == 204
            assert_problem(await second.post("/v1/tenants", {"id": tenant, "name": "X"}), 409)
    info = await bus.js.stream_info(EVENTS.name)
    boot = f"epm.evt._global.token.{bootstrap_token_id(hash_token(admin))}.TokenIssued"
    assert (await bus.js.get_msg(EVENTS.name, info.state.first_seq)).subject == boot


async def test_a_rules_tenant_or_scope_in_the_body_is_refused_not_ignored(gw: Gateway) -> None:
    """POST /v1/rules with "tenant" used to create a rule for all customers."""
    rule = {"name": "g", "effect": "allow", "match": {"publisher": "Contoso"}}
    for path, extra in (
        ("/v1/rules", {"tenant": "acme"}),
        ("/v1/tenants/acme/rules", {"scope": "global"}),
    ):
        problem = assert_problem(await gw.post(path, {**rule, **extra}), 422)
        assert "come from the path" in str(problem)


async def test_a_misspelt_decision_field_is_refused_not_ignored(gw: Gateway) -> None:
    body = {"decision": "approve", "scope": "tenant", "rule_nmae": "Contoso"}
    problem = assert_problem(await gw.post("/v1/requests/req-1/decision", body), 422)
    assert "rule_nmae" in str(problem)


# --- lists of other services, paged (devices: request-svc; channels: notify-svc) --------

FOREIGN = "cursor is not one this API handed out: use next_cursor from the previous page"


@contextlib.asynccontextmanager
async def gateway_with(
    settings: Settings, *definitions: ServiceDefinition
) -> AsyncIterator[Gateway]:
    """The gateway with these services running, and the tenants acme and globex."""
    settings.master_key = base64.b64encode(secrets.token_bytes(32)).decode()
    services = [await start_service(d, settings) for d in definitions]
    assert settings.bootstrap_token_file is not None
    admin = settings.bootstrap_token_file.read_text().strip()
    try:
        async with running_gateway(settings, admin) as gw:
            await gw.tenant("acme")
            await gw.tenant("globex")
            yield gw
    finally:
        for service in reversed(services):
            await service.stop()


@pytest.fixture
async def listing(bus: Bus, gateway_settings: Settings) -> AsyncIterator[Gateway]:
    """The gateway with request-svc and notify-svc, and the tenants acme and globex."""
    async with gateway_with(gateway_settings, REQUESTS, NOTIFY) as gw:
        yield gw


async def pages(
    gw: Gateway, path: str, params: dict[str, Any], token: str | None = None
) -> tuple[list[dict[str, Any]], list[int]]:
    """Every page of a list, following next_cursor: the items and the page sizes."""
    items: list[dict[str, Any]] = []
    sizes: list[int] = []
    cursor: str | None = None
    for _ in range(50):
        r = await gw.get(path, token, params={**params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        items += r.json()["items"]
        sizes.append(len(r.json()["items"]))
        cursor = r.json().get("next_cursor")
        if cursor is None:
            return items, sizes
    raise AssertionError("no last page after 50 pages")


async def enroll_over_http(gw: Gateway, tenant: str, hostname: str) -> Device:
    r = await gw.post(f"/v1/tenants/{tenant}/enrollment-tokens", {})
    assert r.status_code == 201, r.text
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    body = {
        "enrollment_token": r.json()["token"],
        "public_key": base64.b64encode(public).decode(),
        "hostname": hostname,
    }
    r = await gw.client.post("/v1/agent/enroll", json=body)
    assert r.status_code == 201, r.text
    return Device(tenant, r.json()["device_id"], key)


async def test_device_list_pages_over_http_open_requests_first_and_revoked_last(
    listing: Gateway, bus: Bus
) -> None:
    gw = listing
    fleet = {h: await enroll_over_http(gw, "acme", h) for h in ("pc-c", "pc-a", "pc-b", "pc-d")}
    fleet["pc-e"] = await enroll_over_http(gw, "acme", "pc-e")
    await enroll_over_http(gw, "globex", "pc-0")
    for hostname in ("pc-b", "pc-e"):  # an open request each (no approval-svc decides it)
        subject, body, headers = fleet[hostname].message()
        await bus.js.publish(subject, body, headers=headers)

    async def two_open() -> bool:
        r = await gw.get("/v1/tenants/acme/devices", params={"offline": "open"})
        return len(r.json()["items"]) == 2

    await eventually(two_open)
    for hostname in ("pc-d", "pc-e"):
        r = await gw.delete(f"/v1/tenants/acme/devices/{fleet[hostname].device_id}")
        assert r.status_code == 204, r.text

    listed, sizes = await pages(gw, "/v1/tenants/acme/devices", {"limit": 2})
    assert [(d["hostname"], d["offline_open"], d["revoked"]) for d in listed] == [
        ("pc-b", True, False),
        ("pc-e", True, True),
        ("pc-a", False, False),
        ("pc-c", False, False),
        ("pc-d", False, True),
    ]
    assert sizes == [2, 2, 1]
    assert [d["id"] for d in listed] == [fleet[d["hostname"]].device_id for d in listed]
    whole = (await gw.get("/v1/tenants/acme/devices")).json()
    assert whole["items"] == listed and "next_cursor" not in whole

    opened, sizes = await pages(gw, "/v1/tenants/acme/devices", {"offline": "open", "limit": 1})
    assert [d["hostname"] for d in opened] == ["pc-b", "pc-e"] and sizes == [1, 1, 0]

    stranger = (await gw.token("tenant_admin", "globex"))["token"]
    mine, _ = await pages(gw, "/v1/tenants/globex/devices", {}, stranger)
    assert [d["hostname"] for d in mine] == ["pc-0"]
    cursor = (await gw.get("/v1/tenants/acme/devices", params={"limit": 1})).json()["next_cursor"]
    for params in ({}, {"cursor": cursor}, {"cursor": "garbage"}):
        assert_problem(await gw.get("/v1/tenants/acme/devices", stranger, params=params), 404)


async def test_notification_channel_lists_page_over_http_oldest_first(listing: Gateway) -> None:
    gw = listing

    async def add(path: str, n: int, token: str | None = None) -> str:
        body = {"kind": "webhook", "url": f"https://hooks.example.com/{n}"}
        r = await gw.post(path, body, token)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    acme_admin = (await gw.token("tenant_admin", "acme"))["token"]
    acme = [await add("/v1/tenants/acme/notification-channels", n, acme_admin) for n in range(5)]
    msp = [await add("/v1/notification-channels", n) for n in range(3)]
    await add("/v1/tenants/globex/notification-channels", 0)

    listed, sizes = await pages(
        gw, "/v1/tenants/acme/notification-channels", {"limit": 2}, acme_admin
    )
    assert [c["id"] for c in listed] == acme and sizes == [2, 2, 1]
    listed, sizes = await pages(gw, "/v1/notification-channels", {"limit": 3})
    assert [c["id"] for c in listed] == msp and sizes == [3, 0]

    stranger = (await gw.token("tenant_admin", "globex"))["token"]
    first = await gw.get("/v1/tenants/acme/notification-channels", params={"limit": 1})
    for params in ({}, {"cursor": first.json()["next_cursor"]}):
        assert_problem(
            await gw.get("/v1/tenants/acme/notification-channels", stranger, params=params), 404
        )


async def test_a_channels_tenant_or_unknown_field_in_the_body_is_refused_not_ignored(
    listing: Gateway,
) -> None:
    """POST /v1/tenants/acme/notification-channels with "tenant": "globex" used to add an
    acme channel, the body's tenant silently dropped."""
    gw = listing
    hook = {"kind": "webhook", "url": "https://hooks.example.com/epm"}
    for path in ("/v1/tenants/acme/notification-channels", "/v1/notification-channels"):
        problem = assert_problem(await gw.post(path, {**hook, "tenant": "globex"}), 422)
        assert "tenant comes from the path" in problem["detail"]
    problem = assert_problem(
        await gw.post("/v1/tenants/acme/notification-channels", {**hook, "colour": "red"}), 422
    )
    assert "colour" in problem["detail"] and "spelling" in problem["detail"]
    email = {"kind": "email", "to": "helpdesk@example.com", "secret": "whsec_AAAA"}
    problem = assert_problem(await gw.post("/v1/notification-channels", email), 422)
    assert "secret is not for an email channel" in problem["detail"]
    push = {
        "kind": "push",
        "subscription": {
            "endpoint": "https://push.example.com/x",
            "keys": {"p256dh": "k", "auth": "a"},
        },
        "url": "https://hooks.example.com/epm",
    }
    assert "url" in assert_problem(await gw.post("/v1/notification-channels", push), 422)["detail"]
    for listed in ("acme", "globex"):  # nothing was added anywhere
        r = await gw.get(f"/v1/tenants/{listed}/notification-channels")
        assert r.status_code == 200 and r.json()["items"] == [], r.text

    # each kind's own fields still work
    r = await gw.post("/v1/tenants/acme/notification-channels", {**hook, "secret": WHSEC})
    assert r.status_code == 201, r.text
    assert r.json()["kind"] == "webhook"
    acme = (await gw.get("/v1/tenants/acme/notification-channels")).json()["items"]
    assert [c["id"] for c in acme] == [r.json()["id"]]


WHSEC = "whsec_" + base64.b64encode(b"s" * 32).decode()


@pytest.mark.parametrize(
    "path",
    [
        "/v1/tenants/acme/devices",
        "/v1/tenants/acme/notification-channels",
        "/v1/notification-channels",
    ],
)
async def test_a_list_refuses_a_cursor_it_did_not_hand_out_and_a_page_above_500(
    listing: Gateway, path: str
) -> None:
    gw = listing
    await enroll_over_http(gw, "acme", "pc-1")
    await enroll_over_http(gw, "acme", "pc-2")
    for target in ("/v1/tenants/acme/notification-channels", "/v1/notification-channels"):
        for n in range(2):
            r = await gw.post(target, {"kind": "webhook", "url": f"https://h.example.com/{n}"})
            assert r.status_code == 201, r.text
    other_kind = "notification-channels" if path.endswith("/devices") else "devices"
    r = await gw.get(f"/v1/tenants/acme/{other_kind}", params={"limit": 1})
    for cursor in ("300", "garbage", "é", r.json()["next_cursor"]):  # a request list's, made
        # up, not ASCII, the other kind of list's
        problem = assert_problem(await gw.get(path, params={"cursor": cursor}), 422)
        assert problem["detail"].startswith(FOREIGN), cursor
    assert_problem(await gw.get(path, params={"limit": 501}), 422)
    assert len((await gw.get(path, params={"limit": 500})).json()["items"]) == 2


# --- tenant walls before roles: 404 for another tenant's, 403 for a forbidden own ------


@pytest.fixture
async def stack(bus: Bus, gateway_settings: Settings) -> AsyncIterator[Gateway]:
    """The gateway with request-svc, approval-svc and notify-svc; tenants acme and globex."""
    async with gateway_with(gateway_settings, REQUESTS, APPROVALS, NOTIFY) as gw:
        yield gw


async def open_request(gw: Gateway, bus: Bus, tenant: str) -> str:
    """A request from a device enrolled over HTTP, as the agent sends it: its id."""
    device = await enroll_over_http(gw, tenant, f"pc-{tenant}")
    subject, body, headers = device.message()
    await bus.js.publish(subject, body, headers=headers)

    async def created() -> str | None:
        items = (await gw.get(f"/v1/tenants/{tenant}/requests")).json()["items"]
        return str(items[0]["id"]) if items else None

    found: str | None = None

    async def listed() -> bool:
        nonlocal found
        found = await created()
        return found is not None

    await eventually(listed, 20)
    assert found is not None
    return found


async def test_another_tenants_resources_are_404_and_a_forbidden_own_read_is_403(
    stack: Gateway, bus: Bus
) -> None:
    """API.md: another tenant's resources answer 404, a forbidden action in one's own
    tenant 403, for every read an acme integrator (events and audit only) may try."""
    gw = stack
    own, other = await open_request(gw, bus, "acme"), await open_request(gw, bus, "globex")
    integrator = (await gw.token("integrator", "acme"))["token"]
    reads = [
        "/v1/tenants/{t}/devices",
        "/v1/tenants/{t}/requests",
        "/v1/requests?tenant={t}",
        "/v1/requests/{r}",
        "/v1/requests/{r}/rule-draft",
        "/v1/tenants/{t}/rules",
        "/v1/tenants/{t}/offline-policy",
        "/v1/tenants/{t}/notification-channels",
    ]
    for path in reads:
        theirs = await gw.get(path.format(t="globex", r=other), integrator)
        assert_problem(theirs, 404)
        assert "integrator" not in theirs.json()["detail"], path
        mine = await gw.get(path.format(t="acme", r=own), integrator)
        assert_problem(mine, 403)
        assert "integrator" in mine.json()["detail"], path
