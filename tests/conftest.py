"""Fixtures shared by every tier: a real nats-server, fresh streams, a connected bus."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from epm_service.bus import Bus, connect
from epm_service.natsserver import NatsServer
from epm_service.settings import Settings
from epm_service.streams import apply_streams


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One real nats-server with JetStream for the whole session (free port, temp store)."""
    server = NatsServer(tmp_path_factory.mktemp("nats-store"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def settings(nats_server: NatsServer, tmp_path: Path) -> Settings:
    return Settings(nats_url=nats_server.url, data_dir=tmp_path / "data")


@pytest.fixture
async def bus(settings: Settings) -> AsyncIterator[Bus]:
    """A connection to the session server with the EPM streams, empty, for this test only."""
    b = await connect(settings, name="test")
    for info in await b.js.streams_info():
        await b.js.delete_stream(info.config.name)
    await apply_streams(b.js)
    yield b
    with contextlib.suppress(Exception):
        await b.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tier of a test is the folder it lives in: tests/unit, tests/integration, tests/e2e."""
    for item in items:
        for tier in ("unit", "integration", "e2e"):
            if f"/tests/{tier}/" in str(item.path):
                item.add_marker(getattr(pytest.mark, tier))
