"""TLS end to end: a real nats-server that requires TLS (a throwaway CA), the services'
connection (epm_service.bus.connect with EPM_NATS_TLS_*), and the gateway process serving
HTTPS (EPM_HTTP_TLS_*) while it talks to that server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from epm_gateway.domain import new_token
from epm_service.bus import connect
from epm_service.natsserver import NatsServer, ServerTls, free_port
from epm_service.settings import Settings

from tests.certificates import TlsFiles, issue_tls_files
from tests.integration.conftest import empty_streams
from tests.integration.test_gateway_process import gateway_env, wait_ready
from tests.integration.test_request_svc import eventually


def tls_settings(server: NatsServer, files: TlsFiles, data_dir: Path) -> Settings:
    return Settings(nats_url=server.url, nats_tls_ca=files.ca, data_dir=data_dir)


async def test_a_service_publishes_and_consumes_over_tls(
    tls_nats: NatsServer, tls_files: TlsFiles, tmp_path: Path
) -> None:
    assert tls_nats.url.startswith("tls://")
    bus = await connect(tls_settings(tls_nats, tls_files, tmp_path), name="tls-round-trip")
    try:
        await bus.js.add_stream(name="TLS_ROUND_TRIP", subjects=["tls.round-trip"])
        ack = await bus.js.publish("tls.round-trip", b"sealed in transit")
        assert ack.stream == "TLS_ROUND_TRIP"
        sub = await bus.js.pull_subscribe("tls.round-trip", durable="tls-reader")
        (msg,) = await sub.fetch(1, timeout=5)
        assert msg.data == b"sealed in transit"
        await msg.ack()
    finally:
        await bus.js.delete_stream("TLS_ROUND_TRIP")
        await bus.close()


async def test_a_plaintext_client_is_refused(tls_nats: NatsServer) -> None:
    reader, writer = await asyncio.open_connection(tls_nats.host, tls_nats.port)
    try:
        info = await asyncio.wait_for(reader.readline(), 5)
        assert json.loads(info.removeprefix(b"INFO "))["tls_required"] is True
        writer.write(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)  # the server hangs up
    finally:
        writer.close()
    assert b"PONG" not in answer


async def test_a_client_that_does_not_trust_the_ca_is_refused(
    tls_nats: NatsServer, tmp_path: Path
) -> None:
    """No EPM_NATS_TLS_CA: the system's CAs, which never signed the test server."""
    settings = Settings(nats_url=tls_nats.url, data_dir=tmp_path)
    with pytest.raises(ssl.SSLCertVerificationError):
        await connect(settings, name="untrusting", allow_reconnect=False)


async def test_a_client_certificate_is_presented_to_a_server_that_verifies_clients(
    tls_files: TlsFiles, tmp_path: Path
) -> None:
    server_tls = ServerTls(tls_files.cert, tls_files.key, ca=tls_files.ca, verify=True)
    with NatsServer(tmp_path / "store", tls=server_tls) as server:
        without = Settings(nats_url=server.url, nats_tls_ca=tls_files.ca, data_dir=tmp_path)
        # TLS 1.3: the server checks the client's certificate after the handshake and hangs up
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await connect(without, name="no-client-cert", allow_reconnect=False)

        with_cert = without.model_copy(
            update={"nats_tls_cert": tls_files.cert, "nats_tls_key": tls_files.key}
        )
        bus = await connect(with_cert, name="client-cert")
        try:
            await bus.nc.flush(timeout=5)
            assert (await bus.js.account_info()).streams == 0
        finally:
            await bus.close()


@pytest.fixture
async def tls_streams(tls_nats: NatsServer, tls_files: TlsFiles, tmp_path: Path) -> Settings:
    """The EPM streams on the TLS server, empty; settings that reach it."""
    settings = tls_settings(tls_nats, tls_files, tmp_path / "data")
    await empty_streams(settings, "tls-streams")
    return settings


def https_gateway_env(
    settings: Settings, files: TlsFiles, port: int, token_file: Path
) -> dict[str, str]:
    return {
        **gateway_env(settings, port, token_file),
        "EPM_NATS_TLS_CA": str(files.ca),
        "EPM_HTTP_TLS_CERT": str(files.cert),
        "EPM_HTTP_TLS_KEY": str(files.key),
    }


@pytest.fixture
def https_gateway(
    tls_streams: Settings, tls_files: TlsFiles, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``python -m epm_gateway`` with HTTPS on, talking to the TLS nats-server."""
    port = free_port()
    token_file = tmp_path / "admin-token"
    token_file.write_text(new_token() + "\n")
    with (tmp_path / "gateway.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "epm_gateway"],
            env=https_gateway_env(tls_streams, tls_files, port, token_file),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    yield proc, port
    if proc.poll() is None:
        proc.kill()
        proc.wait()


async def test_the_gateway_serves_https_and_reaches_nats_over_tls(
    https_gateway: tuple[subprocess.Popen[bytes], int], tls_files: TlsFiles, tmp_path: Path
) -> None:
    proc, port = https_gateway
    trusted = ssl.create_default_context(cafile=str(tls_files.ca))
    url = f"https://127.0.0.1:{port}"
    await wait_ready(proc, url, verify=trusted)
    async with httpx.AsyncClient(base_url=url, verify=trusted) as client:
        r = await client.get("/healthz")
        assert r.status_code == 200
        assert "max-age" in r.headers["strict-transport-security"]
    with pytest.raises(httpx.TransportError):
        async with httpx.AsyncClient() as plain:
            await plain.get(f"http://127.0.0.1:{port}/healthz")

    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 20) == 0, (tmp_path / "gateway.log").read_text()


async def test_the_gateway_names_a_missing_certificate_file(
    tls_streams: Settings, tls_files: TlsFiles, tmp_path: Path
) -> None:
    token_file = tmp_path / "admin-token"
    token_file.write_text(new_token() + "\n")
    env = https_gateway_env(tls_streams, tls_files, free_port(), token_file)
    env["EPM_HTTP_TLS_CERT"] = str(tmp_path / "absent.crt")
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "epm_gateway"],
        env=env,
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert f"EPM_HTTP_TLS_CERT={tmp_path / 'absent.crt'}: cannot read it".encode() in result.stderr


def _first_cert_der(pem_file: Path) -> bytes:
    pem = pem_file.read_text()
    end = "-----END CERTIFICATE-----"
    return ssl.PEM_cert_to_DER_cert(pem[: pem.index(end) + len(end)])


async def _served_certificate(port: int, trusted: ssl.SSLContext) -> bytes:
    """The certificate the gateway shows a new connection (DER)."""
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=trusted)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()
    assert der is not None
    return bytes(der)


@pytest.fixture
def renewable_gateway(
    tls_streams: Settings, tls_files: TlsFiles, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], int, TlsFiles]]:
    """The HTTPS gateway with its certificate and key in a directory of their own (as a
    mounted Secret), looking at them every 0.1 s."""
    mounted = tmp_path / "https"
    mounted.mkdir()
    files = TlsFiles(tls_files.ca, mounted / "tls.crt", mounted / "tls.key")
    shutil.copy(tls_files.cert, files.cert)
    shutil.copy(tls_files.key, files.key)
    token_file = tmp_path / "admin-token"
    token_file.write_text(new_token() + "\n")
    port = free_port()
    env = {**https_gateway_env(tls_streams, files, port, token_file)}
    env["EPM_TLS_RELOAD_SECONDS"] = "0.1"
    with (tmp_path / "gateway.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "epm_gateway"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    yield proc, port, files
    if proc.poll() is None:
        proc.kill()
        proc.wait()


async def test_a_renewed_gateway_certificate_is_served_without_a_restart(
    renewable_gateway: tuple[subprocess.Popen[bytes], int, TlsFiles],
    tls_files: TlsFiles,
    tmp_path: Path,
) -> None:
    """cert-manager rewrites the mounted Secret before the certificate expires: the gateway
    serves the new one from the next handshake on; a replacement it cannot load (a
    half-written file) leaves it serving the one it has."""
    proc, port, mounted = renewable_gateway
    renewed = issue_tls_files(tmp_path / "renewed")
    both_cas = tmp_path / "cas.crt"
    both_cas.write_text(tls_files.ca.read_text() + renewed.ca.read_text())
    trusted = ssl.create_default_context(cafile=str(both_cas))
    await wait_ready(proc, f"https://127.0.0.1:{port}", verify=trusted)
    assert await _served_certificate(port, trusted) == _first_cert_der(tls_files.cert)

    # renewed: both files replaced, each at once (a rename), as the kubelet swaps a Secret
    shutil.copy(renewed.cert, tmp_path / "new.crt")
    shutil.copy(renewed.key, tmp_path / "new.key")
    os.replace(tmp_path / "new.key", mounted.key)
    os.replace(tmp_path / "new.crt", mounted.cert)

    async def serves_the_renewed_one() -> bool:
        return await _served_certificate(port, trusted) == _first_cert_der(renewed.cert)

    await eventually(serves_the_renewed_one)

    mounted.cert.write_text("-----BEGIN CERTIFICATE-----\nhalf written")
    await asyncio.sleep(0.5)  # several looks at the files
    assert await _served_certificate(port, trusted) == _first_cert_der(renewed.cert)
    assert proc.poll() is None
    assert "cannot be loaded" in (tmp_path / "gateway.log").read_text()
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 20) == 0, (tmp_path / "gateway.log").read_text()
