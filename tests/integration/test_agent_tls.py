"""The reference agent against a nats-server that speaks TLS only, with a certificate from a
private CA (tests.certificates): approval-svc and request-svc in process and the gateway as
a process, all over TLS (EPM_NATS_TLS_CA), and ``epm-agent`` run as a command.

An agent enrolled with ``--nats-ca`` (or given the CA by request-svc, EPM_PUBLIC_NATS_CA)
requests, syncs its offline log and simulates a small fleet over TLS; one without the CA
(or with another CA) fails with a certificate error that says what to do, and does not
pretend to be offline."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from epm_agent.offline_state import append_record
from epm_agent.state import StateDir
from epm_approval.app import DEFINITION as APPROVAL
from epm_gateway.domain import new_token
from epm_request.app import DEFINITION as REQUESTS
from epm_service.natsserver import NatsServer, free_port
from epm_service.principal import Principal
from epm_service.rpc import call
from epm_service.runtime import RunningService, start_service
from epm_service.settings import Settings

from tests.certificates import TlsFiles, issue_tls_files
from tests.integration.conftest import empty_streams
from tests.integration.test_gateway_process import gateway_env, wait_ready

ACME_ADMIN = Principal("tok-2", "ann", "tenant_admin", "acme")
SHA = "5e" * 32


@dataclass
class Stack:
    settings: Settings
    url: str  # the gateway (plain HTTP: the agent's NATS connection is what is tested)
    admin_token: str
    requests: RunningService
    tmp: Path

    async def enrollment_token(self) -> str:
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        async with httpx.AsyncClient(base_url=self.url, headers=headers) as client:
            deadline = time.monotonic() + 20
            while True:  # request-svc sees the new tenant a moment after the gateway
                r = await client.post("/v1/tenants/acme/enrollment-tokens", json={})
                if r.status_code == 201 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
        assert r.status_code == 201, r.text
        token: str = r.json()["token"]
        return token


@pytest.fixture
async def stack(
    request: pytest.FixtureRequest, tls_nats: NatsServer, tls_files: TlsFiles, tmp_path: Path
) -> AsyncIterator[Stack]:
    """Everything over TLS. ``indirect`` param True: request-svc hands out the CA."""
    settings = Settings(
        nats_url=tls_nats.url,
        nats_tls_ca=tls_files.ca,
        data_dir=tmp_path / "data",
        master_key=base64.b64encode(secrets.token_bytes(32)).decode(),
        public_nats_ca=tls_files.ca if getattr(request, "param", False) else None,
    )
    await empty_streams(settings, "tls-agent-setup")
    approval = await start_service(APPROVAL, settings)
    requests = await start_service(REQUESTS, settings)
    port = free_port()
    admin_token = new_token()
    token_file = tmp_path / "admin-token"
    token_file.write_text(admin_token + "\n")
    env = {**gateway_env(settings, port, token_file), "EPM_NATS_TLS_CA": str(tls_files.ca)}
    env["EPM_MASTER_KEY"] = str(settings.master_key)
    gateway = start_gateway(env, tmp_path / "gateway.log")
    try:
        url = f"http://127.0.0.1:{port}"
        await wait_ready(gateway, url)
        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {admin_token}"}
        ) as client:
            r = await client.post("/v1/tenants", json={"id": "acme", "name": "Acme"})
            assert r.status_code == 201, r.text
        yield Stack(settings, url, admin_token, requests, tmp_path)
    finally:
        if gateway.poll() is None:
            gateway.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(gateway.wait, 20)
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait()
        await requests.stop()
        await approval.stop()


def start_gateway(env: dict[str, str], log_file: Path) -> subprocess.Popen[bytes]:
    with log_file.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "epm_gateway"], env=env, stdout=log, stderr=subprocess.STDOUT
        )


async def epm_agent(*argv: str, **env: str) -> tuple[int, dict[str, Any]]:
    """``epm-agent ... --json`` as a process (the services run on this event loop)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("EPM_AGENT_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "epm_agent.cli",
        *argv,
        "--json",
        env={**environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    assert out.count(b"\n") == 1, (out, err)
    result: dict[str, Any] = orjson.loads(out)
    return proc.returncode, result


async def enroll(stack: Stack, state: Path, *extra: str, **env: str) -> dict[str, Any]:
    token = await stack.enrollment_token()
    code, out = await epm_agent(
        "enroll", "--url", stack.url, "--enrollment-token", token, "--state-dir", str(state),
        *extra, **env,
    )  # fmt: skip
    assert code == 0, out
    return out


def write_elevations(state_dir: Path, device_id: str, count: int) -> None:
    """Offline log records, as the agent writes them when it elevates while offline."""
    with StateDir(state_dir).open(create=False) as state, state.transaction() as db:
        for i in range(count):
            append_record(
                db,
                "ElevationPerformed",
                device_id,
                datetime(2026, 3, 1, 8, 30, i, tzinfo=UTC),
                {"user": "bob", "app": {"file_name": f"tool{i}.exe", "sha256": f"{i:064x}"}},
            )


def request_args(state: Path) -> tuple[str, ...]:
    return (
        "request", "--exe", "C:\\Tools\\setup.exe", "--sha256", SHA, "--user", "alice",
        "--reason", "install the printer", "--state-dir", str(state),
    )  # fmt: skip


async def test_an_agent_enrolled_with_the_ca_requests_and_syncs_over_tls(
    stack: Stack, tls_files: TlsFiles, tls_nats: NatsServer
) -> None:
    state = stack.tmp / "agent"
    enrolled = await enroll(stack, state, "--nats-ca", str(tls_files.ca))
    assert (state / "nats-ca.pem").read_bytes() == tls_files.ca.read_bytes()
    with StateDir(state).open(create=False) as s:
        assert s.require_identity().nats_url == tls_nats.url.rstrip("/")
    assert tls_nats.url.startswith("tls://")

    # a rule decides at once: the answer comes back on the device's inbox, over TLS
    await call(
        stack.requests.ctx.bus.nc,
        "approval-svc",
        "create_rule",
        {"tenant": "acme", "name": "setup", "effect": "allow", "match": {"sha256": SHA}},
        ACME_ADMIN,
    )
    code, out = await epm_agent(*request_args(state))
    assert code == 0, out
    assert out["status"] == "approved" and out["decided_by"].startswith("rule:")

    write_elevations(state, enrolled["device_id"], 3)
    code, out = await epm_agent("sync", "--wait", "30", "--state-dir", str(state))
    assert code == 0, out
    assert out == {"sent": 3, "confirmed": 3, "pending": 0}

    code, out = await epm_agent("status", "--state-dir", str(state))
    assert code == 0, out
    assert out["online"] is True
    assert [r["status"] for r in out["requests"]] == ["approved"]


async def test_an_agent_without_the_ca_says_the_certificate_is_not_trusted(
    stack: Stack, tls_files: TlsFiles, tmp_path: Path
) -> None:
    state = stack.tmp / "agent"
    await enroll(stack, state)  # enrollment is HTTP: it works, and keeps no CA
    assert not (state / "nats-ca.pem").exists()

    code, out = await epm_agent(*request_args(state))
    assert code == 1
    error = out["error"]
    assert "showed a certificate this agent does not trust" in error
    assert "certificate verify failed: unable to get local issuer certificate" in error
    assert "enroll with --nats-ca FILE" in error and str(state / "nats-ca.pem") in error
    assert "request code" not in error  # not mistaken for being offline

    code, out = await epm_agent("status", "--state-dir", str(state))
    assert code == 1 and "does not trust" in out["error"]

    # another CA in the state dir: trusted instead of the system's, and still not the one
    other = issue_tls_files(tmp_path / "other").ca
    (state / "nats-ca.pem").write_bytes(other.read_bytes())
    code, out = await epm_agent("sync", "--state-dir", str(state))
    assert code == 1
    assert f"trusts only the CA in {state / 'nats-ca.pem'}" in out["error"]

    # the right CA written there later: the agent gets through
    (state / "nats-ca.pem").write_bytes(tls_files.ca.read_bytes())
    code, out = await epm_agent("status", "--state-dir", str(state))
    assert code == 0 and out["online"] is True, out


@pytest.mark.parametrize("stack", [True], indirect=True)
async def test_the_ca_request_svc_hands_out_is_kept_and_used(
    stack: Stack, tls_files: TlsFiles
) -> None:
    state = stack.tmp / "agent"
    await enroll(stack, state)
    assert (state / "nats-ca.pem").read_bytes() == tls_files.ca.read_bytes()
    code, out = await epm_agent(*request_args(state))
    assert code == 0, out
    assert out["status"] == "open"


async def test_simulate_takes_the_ca_from_the_environment(
    stack: Stack, tls_files: TlsFiles
) -> None:
    argv = ("simulate", "--url", stack.url, "--token", stack.admin_token, "--tenant", "acme")
    code, out = await epm_agent(
        *argv, "--devices", "2", "--events", "2", EPM_AGENT_NATS_CA=str(tls_files.ca)
    )
    assert code == 0, out
    assert (out["devices"], out["records"], out["sent"], out["confirmed"]) == (2, 8, 8, 8)
