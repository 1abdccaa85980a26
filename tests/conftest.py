"""Fixtures shared by every tier: a real nats-server, fresh streams, a connected bus."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import nats.js.errors
import pytest
from epm_service.bus import Bus, connect
from epm_service.natsauth import (
    AuthKeys,
    admin_permissions,
    service_permissions,
    write_private,
)
from epm_service.natsserver import NatsServer
from epm_service.settings import Settings
from epm_service.streams import apply_streams
from hypothesis import settings as hypothesis_settings

# Property and fuzz tests explore at random on a developer's machine; CI
# (HYPOTHESIS_PROFILE=ci, set by .ci/run) replays the same derandomized examples
# every run, so a landing never depends on the luck of the draw.
hypothesis_settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


STORE_CREATION_FAILED = 10049
"""nats-server's "error creating store for stream": a stream made again a moment after the
same name was deleted can find the old store still being removed (seen once in a full
run, when every test deletes and recreates the streams of one session server)."""


async def delete_streams(bus: Bus) -> None:
    """Every stream on the server gone (what a service finds before `epm streams apply`)."""
    for info in await bus.js.streams_info():
        await bus.js.delete_stream(str(info.config.name))


async def fresh_streams(bus: Bus) -> None:
    """Every stream on the server deleted and the EPM streams created again, empty."""
    await delete_streams(bus)
    for attempt in range(20):
        try:
            await apply_streams(bus.js)
            return
        except nats.js.errors.ServerError as exc:
            if exc.err_code != STORE_CREATION_FAILED or attempt == 19:
                raise
            await asyncio.sleep(0.05)


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One real nats-server with JetStream for the whole session (free port, temp store; its
    log beside the store, for a failure's post-mortem)."""
    root = tmp_path_factory.mktemp("nats")
    server = NatsServer(root / "store", log_file=root / "nats.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def settings(nats_server: NatsServer, tmp_path: Path) -> Settings:
    # Uploads are prepared on the event loop unless a test asks for the worker process
    # (test_replay_offline_log, and every service started as a process): spawning one for
    # each of the suite's hundreds of in-process services costs a second of CPU each.
    return Settings(nats_url=nats_server.url, data_dir=tmp_path / "data", replay_workers=0)


@pytest.fixture
async def bus(settings: Settings) -> AsyncIterator[Bus]:
    """A connection to the session server with the EPM streams, empty, for this test only."""
    b = await connect(settings, name="test")
    await fresh_streams(b)
    yield b
    with contextlib.suppress(Exception):
        await b.close()


@dataclass
class AuthNats:
    """A nats-server in operator mode (epm_service.natsauth): no anonymous clients."""

    server: NatsServer
    keys: AuthKeys
    files: Path

    @property
    def url(self) -> str:
        return self.server.url

    def write_creds(self, name: str, text: str) -> str:
        path = self.files / f"{name}.creds"
        write_private(path, text.encode())
        return str(path)

    def admin_creds(self) -> str:
        return self.write_creds("admin", self.keys.user_creds("admin", admin_permissions()))

    def service_creds(self, service: str) -> str:
        return self.write_creds(
            service, self.keys.user_creds(service, service_permissions(service))
        )

    def device_creds(self, tenant: str, device: str) -> str:
        return self.write_creds(
            f"{tenant}-{device}", self.keys.issuer().device_creds(tenant, device)
        )

    def issuer_file(self) -> str:
        path = self.files / "issuer.json"
        write_private(path, self.keys.issuer().dump())
        return str(path)


@pytest.fixture(scope="session")
def nats_auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthNats]:
    """A second real nats-server, with JWT auth on (operator, system and EPM accounts, the full
    resolver), for the tests of who may do what; the open ``nats_server`` serves the rest."""
    root = tmp_path_factory.mktemp("nats-auth")
    keys = AuthKeys.load_or_create(root / "keys.json")
    config = root / "auth.conf"
    config.write_text(keys.server_config(root / "jwt"))
    server = NatsServer(root / "store", log_file=root / "nats.log", extra=["-c", str(config)])
    server.start()
    yield AuthNats(server, keys, root)
    server.stop()


@pytest.fixture
async def auth_bus(nats_auth_server: AuthNats) -> AsyncIterator[Bus]:
    """An admin connection to the auth server with the EPM streams, empty, for this test."""
    settings = Settings(nats_url=nats_auth_server.url, nats_creds=nats_auth_server.admin_creds())
    b = await connect(settings, name="test-admin")
    await fresh_streams(b)
    yield b
    with contextlib.suppress(Exception):
        await b.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tier of a test is the folder it lives in: tests/unit, tests/integration, tests/e2e."""
    for item in items:
        for tier in ("unit", "integration", "e2e"):
            if f"/tests/{tier}/" in str(item.path):
                item.add_marker(getattr(pytest.mark, tier))


# A phase that runs this long is about to hit pytest-timeout: print what every asyncio task
# and thread is waiting on first, so an intermittent hang (e.g. in a service's stop) can be
# read from the CI log instead of guessed at.
HANG_REPORT_SECONDS = float(os.environ.get("EPM_TEST_HANG_REPORT_SECONDS", "120"))


def _report_hang(phase: str, nodeid: str) -> None:
    import asyncio
    import faulthandler
    import sys

    out = sys.stderr
    print(f"\n=== {nodeid} still in {phase} after {HANG_REPORT_SECONDS:.0f} s ===", file=out)
    # every loop's tasks (asyncio.all_tasks() would need the hung loop's own thread)
    for task in list(getattr(asyncio.tasks, "_all_tasks", ())):
        if task.done():
            continue
        print(f"--- task {task.get_name()}: {task.get_coro()!r}", file=out)
        with contextlib.suppress(Exception):
            task.print_stack(limit=12, file=out)
    faulthandler.dump_traceback(file=out, all_threads=True)
    out.flush()


def _watch(phase: str) -> object:
    @pytest.hookimpl(hookwrapper=True)
    def hook(item: pytest.Item) -> Iterator[None]:
        import threading

        timer = threading.Timer(HANG_REPORT_SECONDS, _report_hang, (phase, item.nodeid))
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()

    return hook


pytest_runtest_setup = _watch("setup")
pytest_runtest_call = _watch("call")
pytest_runtest_teardown = _watch("teardown")
