"""Fixtures shared by the integration tests that need them in more than one module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from epm_service.bus import Bus, connect
from epm_service.natsserver import NatsServer, ServerTls
from epm_service.settings import Settings
from epm_service.streams import apply_streams

from tests.certificates import TlsFiles, issue_tls_files


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A throwaway CA and a server certificate for localhost and 127.0.0.1."""
    return issue_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_nats(tmp_path_factory: pytest.TempPathFactory, tls_files: TlsFiles) -> Iterator[NatsServer]:
    """A nats-server that accepts TLS clients only (client TLS as in the prod overlay)."""
    root = tmp_path_factory.mktemp("nats-tls")
    with NatsServer(
        root / "store", log_file=root / "nats.log", tls=ServerTls(tls_files.cert, tls_files.key)
    ) as server:
        yield server


async def delete_streams(bus: Bus) -> None:
    """Every stream on the server gone (what a service finds before `epm streams apply`)."""
    for info in await bus.js.streams_info():
        await bus.js.delete_stream(str(info.config.name))


async def empty_streams(settings: Settings, name: str) -> None:
    """The EPM streams on the server ``settings`` reaches, created afresh and empty."""
    bus = await connect(settings, name=name)
    try:
        await delete_streams(bus)
        await apply_streams(bus.js)
    finally:
        await bus.close()
