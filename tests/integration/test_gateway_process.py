"""``python -m epm_gateway`` as an operator runs it: uvicorn on a port, SIGTERM stops it cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from epm_gateway.domain import new_token
from epm_service.bus import Bus
from epm_service.natsserver import free_port
from epm_service.settings import Settings

from tests.conftest import delete_streams
from tests.integration.test_events_sse_stream import sse


def gateway_env(settings: Settings, port: int, token_file: Path) -> dict[str, str]:
    return {
        **os.environ,
        "EPM_NATS_URL": settings.nats_url,
        "EPM_DATA_DIR": str(settings.data_dir),
        "EPM_HTTP_PORT": str(port),
        "EPM_BOOTSTRAP_TOKEN_FILE": str(token_file),
    }


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "admin-token"
    path.write_text(new_token() + "\n")
    return path


@pytest.fixture
def gateway_process(
    bus: Bus, settings: Settings, token_file: Path, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    log = (tmp_path / "gateway.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "epm_gateway"],
        env=gateway_env(settings, port, token_file),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    yield proc, f"http://127.0.0.1:{port}"
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    log.close()


async def ready_gateway(
    gateway_process: tuple[subprocess.Popen[bytes], str], token_file: Path
) -> tuple[subprocess.Popen[bytes], str, dict[str, str]]:
    """The gateway process once it is ready, its URL, and the bootstrap token's headers."""
    proc, url = gateway_process
    token = token_file.read_text().strip()  # noqa: ASYNC240 (a small local file)
    await wait_ready(proc, url)
    return proc, url, {"Authorization": f"Bearer {token}"}


async def wait_ready(
    proc: subprocess.Popen[bytes],
    url: str,
    timeout: float = 30,
    verify: ssl.SSLContext | bool = True,
) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(verify=verify) as client:
        while time.monotonic() < deadline:
            assert proc.poll() is None, "the gateway exited before it was ready"
            try:
                if (await client.get(f"{url}/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(f"gateway at {url} not ready within {timeout}s")


async def test_gateway_process_serves_http_and_stops_on_sigterm(
    gateway_process: tuple[subprocess.Popen[bytes], str], token_file: Path
) -> None:
    proc, url, headers = await ready_gateway(gateway_process, token_file)
    async with httpx.AsyncClient(base_url=url, headers=headers) as client:
        r = await client.post("/v1/tenants", json={"id": "acme", "name": "Acme"})
        assert r.status_code == 201, r.text
        assert (await client.get("/v1/tenants")).json()["items"] == [{"id": "acme", "name": "Acme"}]

    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 20) == 0


async def test_sigterm_ends_open_event_streams_and_the_gateway_exits_within_seconds(
    gateway_process: tuple[subprocess.Popen[bytes], str], token_file: Path
) -> None:
    proc, url, headers = await ready_gateway(gateway_process, token_file)
    async with (
        asyncio.timeout(30),
        httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client,
        client.stream("GET", "/v1/events", params={"after": 0}) as r,
    ):
        assert r.status_code == 200, await r.aread()
        frames = sse(r)
        assert await anext(frames) == {"comment": "connected"}
        async for frame in frames:  # the bootstrap token's TokenIssued: the stream is live
            if "id" in frame:
                break
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        rest = [frame async for frame in frames]  # the server ends the stream
        assert await asyncio.to_thread(proc.wait, 20) == 0
        stopped_in = time.monotonic() - signalled
    assert {"comment": "ended: the server is stopping"} in rest
    assert stopped_in < 5, f"the gateway took {stopped_in:.1f}s to stop"


async def test_gateway_refuses_to_start_without_streams(
    bus: Bus, settings: Settings, token_file: Path
) -> None:
    await delete_streams(bus)
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "epm_gateway"],
        env=gateway_env(settings, free_port(), token_file),
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert b"epm streams apply" in result.stderr
