"""The gateway's guard against a real nats-server: rate limits, body size, security headers,
and token revocation that holds at once on every replica."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from epm_gateway.api import create_app
from epm_gateway.hardening import HardeningSettings, TokenBuckets
from epm_service.runtime import RunningService
from epm_service.settings import Settings

from tests.integration.test_gateway_api import (
    Gateway,
    assert_problem,
    gateway_settings,
    gw,
    running_gateway,
)

__all__ = ["gateway_settings", "gw"]  # fixtures, used by name


@contextlib.asynccontextmanager
async def client_of(
    service: RunningService, base_url: str = "http://gateway"
) -> AsyncIterator[httpx.AsyncClient]:
    """A fresh app (so it reads the EPM_* limits set by the test) on a running gateway."""
    transport = httpx.ASGITransport(app=create_app(service), client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- token buckets ---------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_says_how_long_to_wait() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=2.0, burst=3, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)
    assert buckets.take("b") == 0.0  # another key has its own bucket
    clock.now += 0.5
    assert buckets.take("a") == 0.0
    clock.now += 100
    assert [buckets.take("a") for _ in range(4)][-1] > 0  # refills to the burst, not beyond


def test_buckets_forget_the_least_recently_used_keys_beyond_their_bound() -> None:
    buckets = TokenBuckets(rate=1.0, burst=1, clock=Clock(), max_keys=2)
    buckets.take("a")
    buckets.take("b")
    buckets.take("c")  # "a" goes
    assert buckets.take("a") == 0.0  # a fresh, full bucket
    assert buckets.take("c") > 0


def test_a_rate_of_zero_turns_the_limit_off() -> None:
    buckets = TokenBuckets(rate=0.0, burst=1)
    assert all(buckets.take("a") == 0.0 for _ in range(1000))


# --- rate limits over HTTP ----------------------------------------------------------------


@pytest.fixture
def limits(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    monkeypatch.setenv("EPM_RATE_PER_PRINCIPAL", "0.5")
    monkeypatch.setenv("EPM_BURST_PER_PRINCIPAL", "3")
    monkeypatch.setenv("EPM_RATE_PER_ADDRESS", "1000")
    monkeypatch.setenv("EPM_BURST_PER_ADDRESS", "1000")
    assert HardeningSettings().burst_per_principal == 3
    yield monkeypatch


async def test_a_principal_over_its_rate_gets_429_with_retry_after(
    gw: Gateway, limits: pytest.MonkeyPatch
) -> None:
    other = await gw.token("msp_technician", None)
    async with client_of(gw.service) as client:
        for _ in range(3):
            assert (await client.get("/v1/tenants", headers=bearer(gw.admin))).status_code == 200
        r = await client.get("/v1/tenants", headers=bearer(gw.admin))
        body = assert_problem(r, 429)
        assert int(r.headers["retry-after"]) >= 1
        assert "slow down" in body["detail"]
        # another principal from the same address still gets through
        assert (await client.get("/v1/tenants", headers=bearer(other["token"]))).status_code == 200
        # probes and metrics are never limited
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await client.get(path, headers=bearer(gw.admin))).status_code == 200


async def test_made_up_tokens_are_limited_per_token_and_per_address(
    gw: Gateway, limits: pytest.MonkeyPatch
) -> None:
    limits.setenv("EPM_RATE_PER_ADDRESS", "0.5")
    limits.setenv("EPM_BURST_PER_ADDRESS", "5")
    async with client_of(gw.service) as client:
        statuses = [
            (await client.get("/v1/tenants", headers=bearer(f"epm_guess{i}"))).status_code
            for i in range(8)
        ]
    assert statuses[:5] == [401] * 5  # each guess is a new credential: the address limit
    assert statuses[5:] == [429] * 3
    assert (await gw.get("/v1/tenants")).status_code == 200  # other addresses unaffected


# --- body size ------------------------------------------------------------------------


async def test_a_body_above_the_limit_is_413_before_any_route(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EPM_MAX_BODY_BYTES", "1024")
    async with client_of(gw.service) as client:
        big = {"id": "acme", "name": "x" * 2000}
        body = assert_problem(
            await client.post("/v1/tenants", json=big, headers=bearer(gw.admin)), 413
        )
        assert "1024 bytes" in body["detail"]

        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"id": "acme", "name": "'
            for _ in range(40):
                yield b"y" * 100
            yield b'"}'

        r = await client.post(
            "/v1/tenants",
            content=chunks(),
            headers=bearer(gw.admin) | {"Content-Type": "application/json"},
        )
        assert_problem(r, 413)
        assert (await client.get("/v1/tenants", headers=bearer(gw.admin))).json()["items"] == []

        async def small() -> AsyncIterator[bytes]:
            yield b'{"id": "acme", '
            yield b'"name": "Acme"}'

        r = await client.post(
            "/v1/tenants",
            content=small(),
            headers=bearer(gw.admin) | {"Content-Type": "application/json"},
        )
        assert r.status_code == 201, r.text


async def test_the_default_limit_accepts_ordinary_bodies_and_refuses_a_megabyte(
    gw: Gateway,
) -> None:
    assert HardeningSettings().max_body_bytes == 256 * 1024
    r = await gw.client.post(
        "/v1/tenants", json={"id": "acme", "name": "A" * (1 << 20)}, headers=bearer(gw.admin)
    )
    assert_problem(r, 413)
    await gw.tenant("acme")


# --- security headers ---------------------------------------------------------------------


async def test_api_answers_carry_security_headers_and_are_not_cached(gw: Gateway) -> None:
    for r in (await gw.get("/v1/tenants"), await gw.client.get("/v1/tenants")):
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert r.headers["x-frame-options"] == "DENY"
        assert "default-src 'none'" in r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert r.headers["cache-control"] == "no-store"
        assert "strict-transport-security" not in r.headers  # plain http


async def test_the_console_keeps_its_own_policy(gw: Gateway) -> None:
    r = await gw.client.get("/")
    assert r.status_code == 200
    policy = r.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert r.headers["x-content-type-options"] == "nosniff"


async def test_hsts_is_sent_over_https_only(gw: Gateway) -> None:
    async with client_of(gw.service, base_url="https://gateway") as client:
        r = await client.get("/healthz")
    assert r.headers["strict-transport-security"].startswith("max-age=")


async def test_hsts_is_sent_when_the_public_url_is_https(
    gw: Gateway, gateway_settings: Settings
) -> None:
    gateway_settings.public_url = "https://epm.example.com"
    async with client_of(gw.service) as client:
        r = await client.get("/healthz")
    assert "max-age=" in r.headers["strict-transport-security"]


# --- revocation ------------------------------------------------------------------------


async def test_a_revoked_token_is_refused_at_once_on_this_and_another_replica(
    gw: Gateway, gateway_settings: Settings, tmp_path: Path
) -> None:
    second = gateway_settings.model_copy(
        update={"data_dir": tmp_path / "replica-2", "bootstrap_token_file": None}
    )
    second.data_dir.mkdir()
    async with running_gateway(second, gw.admin) as replica:
        for _ in range(10):
            issued = await gw.token("msp_technician", None)
            for g in (gw, replica):  # both replicas know it
                assert (await g.get("/v1/tenants", token=issued["token"])).status_code == 200
            assert (await gw.delete(f"/v1/tokens/{issued['id']}")).status_code == 204
            assert_problem(await gw.get("/v1/tenants", token=issued["token"]), 401)
            assert_problem(await replica.get("/v1/tenants", token=issued["token"]), 401)


async def test_a_replica_whose_projection_lags_still_refuses_a_revoked_token(
    gw: Gateway, gateway_settings: Settings, tmp_path: Path
) -> None:
    second = gateway_settings.model_copy(
        update={"data_dir": tmp_path / "replica-2", "bootstrap_token_file": None}
    )
    second.data_dir.mkdir()
    async with running_gateway(second, gw.admin) as replica:
        issued = await gw.token("msp_technician", None)
        assert (await replica.get("/v1/tenants", token=issued["token"])).status_code == 200
        # from now on this replica's projection hears nothing: the worst case of lag
        await replica.service.ctx.projector("directory")._sub.unsubscribe()
        assert (await gw.delete(f"/v1/tokens/{issued['id']}")).status_code == 204
        body = assert_problem(await replica.get("/v1/tenants", token=issued["token"]), 401)
        assert "revoked" in body["detail"]
        assert (await replica.get("/v1/tenants")).status_code == 200  # others still work
