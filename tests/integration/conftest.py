"""Fixtures shared by the integration tests that need them in more than one module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from epm_service.bus import connect
from epm_service.natsserver import NatsServer, ServerTls
from epm_service.settings import Settings

from tests.certificates import TlsFiles, issue_tls_files
from tests.conftest import fresh_streams


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


async def empty_streams(settings: Settings, name: str) -> None:
    """The EPM streams on the server ``settings`` reaches, created afresh and empty."""
    bus = await connect(settings, name=name)
    try:
        await fresh_streams(bus)
    finally:
        await bus.close()
