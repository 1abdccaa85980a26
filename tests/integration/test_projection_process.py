"""A projection written in a process of its own (epm_service.projection_process) on a real
nats-server: the service reads what the child writes, as of the sequences it waits for; a
child killed mid-stream is started again and goes on from its checkpoint; a stop ends it."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from epm_events.catalog import TenantCreated
from epm_service.bus import Bus
from epm_service.projection_process import (
    OwnProcess,
    ProjectionProcess,
    ProjectionProcessFailed,
)
from epm_service.publisher import EventPublisher
from epm_service.settings import Settings
from epm_service.tenants import TenantDirectory

from tests.e2e.devstack import process_alive

pytestmark = pytest.mark.integration

SPEC = OwnProcess(TenantDirectory)


def tenants(conn: object) -> list[str]:
    return [r[0] for r in conn.execute("SELECT id FROM tenants ORDER BY id")]  # type: ignore[attr-defined]


async def add_tenant(bus: Bus, tenant: str) -> int:
    [appended] = await EventPublisher(bus.js, "/epm/test").append(
        tenant, [TenantCreated(tenant_id=tenant, name=tenant, created_by="test")], 0
    )
    return appended.seq


async def test_the_service_reads_what_its_projection_process_applied(
    bus: Bus, settings: Settings
) -> None:
    before = await add_tenant(bus, "acme")
    store = ProjectionProcess(SPEC, settings, "test-svc", settings.db_path("test-svc-tenants"))
    await store.start()
    try:
        await store.wait_caught_up(10)
        assert store.position >= before
        assert store.read_now(tenants) == ["acme"]
        seq = await add_tenant(bus, "globex")
        assert await store.wait_for(seq)
        assert store.read_now(tenants) == ["acme", "globex"]
        assert await store.read(tenants) == ["acme", "globex"]
        # read() writes what the child has received before it reads: nothing waited for
        await add_tenant(bus, "initech")
        await asyncio.sleep(0.05)
        assert await store.read(tenants) == ["acme", "globex", "initech"]
    finally:
        await store.stop()


async def test_a_killed_projection_process_starts_again_and_goes_on(
    bus: Bus, settings: Settings
) -> None:
    store = ProjectionProcess(SPEC, settings, "test-svc", settings.db_path("test-svc-tenants"))
    await store.start()
    try:
        assert await store.wait_for(await add_tenant(bus, "acme"))
        killed = store.pid
        assert killed is not None
        os.kill(killed, signal.SIGKILL)
        seq = await add_tenant(bus, "globex")  # while no child runs
        for _ in range(300):  # no child to ask: False at once, until the next one runs
            if await store.wait_for(seq, timeout=1):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("no new child applied the event within 30 s")
        assert store.pid != killed
        assert store.read_now(tenants) == ["acme", "globex"]
        assert not process_alive(killed)
    finally:
        await store.stop()


async def test_stopping_the_service_side_ends_the_child(bus: Bus, settings: Settings) -> None:
    store = ProjectionProcess(SPEC, settings, "test-svc", settings.db_path("test-svc-tenants"))
    await store.start()
    pid = store.pid
    assert pid is not None and process_alive(pid)
    await store.stop()
    assert not process_alive(pid)
    assert not await store.wait_for(10**9, timeout=0.1)  # nobody left to ask: no answer


async def test_a_child_that_cannot_open_its_file_fails_the_start_with_a_reason(
    bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    store = ProjectionProcess(SPEC, settings, "test-svc", blocker / "tenants.sqlite")
    with pytest.raises(ProjectionProcessFailed, match="ended before it opened"):
        await store.start()
    await store.stop()
