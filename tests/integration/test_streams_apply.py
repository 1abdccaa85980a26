"""``epm streams apply`` creates the streams once and then leaves them alone."""

from __future__ import annotations

import dataclasses

import pytest
from epm_events.streams import ALL_STREAMS, EVENTS
from epm_service.bus import Bus
from epm_service.settings import Settings
from epm_service.streams import MissingStreams, apply_streams, check_streams
from nats.js.api import StorageType
from nats.js.errors import APIError


async def delete_all(bus: Bus) -> None:
    for info in await bus.js.streams_info():
        await bus.js.delete_stream(info.config.name)


async def test_apply_creates_then_leaves_unchanged(bus: Bus) -> None:
    await delete_all(bus)
    names = [s.name for s in ALL_STREAMS]
    assert await apply_streams(bus.js) == [(n, "created") for n in names]
    assert await apply_streams(bus.js) == [(n, "unchanged") for n in names]
    await check_streams(bus.js, tuple(names))


async def test_events_stream_is_file_backed_and_refuses_delete_and_purge(bus: Bus) -> None:
    config = (await bus.js.stream_info(EVENTS.name)).config
    assert config.storage == StorageType.FILE
    assert config.deny_delete is True
    assert config.deny_purge is True
    assert config.subjects == ["epm.evt.>"]
    await bus.js.publish("epm.evt.acme.tenant.acme.TenantCreated", b"{}")
    with pytest.raises(APIError):
        await bus.js.delete_msg(EVENTS.name, 1)
    with pytest.raises(APIError):
        await bus.js.purge_stream(EVENTS.name)
    assert (await bus.js.stream_info(EVENTS.name)).state.messages == 1


async def test_every_stream_is_file_backed_with_replicas_from_settings(bus: Bus) -> None:
    for spec in ALL_STREAMS:
        config = (await bus.js.stream_info(spec.name)).config
        assert config.storage == StorageType.FILE, spec.name
        assert config.num_replicas == 1, spec.name
        assert config.max_msg_size == spec.max_msg_size, spec.name


async def test_replicas_come_from_settings(bus: Bus, monkeypatch: pytest.MonkeyPatch) -> None:
    """A single server cannot hold R3, so EPM_STREAM_REPLICAS=3 reaches it and is refused there."""
    monkeypatch.setenv("EPM_STREAM_REPLICAS", "3")
    settings = Settings()
    assert settings.stream_replicas == 3
    with pytest.raises(APIError, match=r"(?i)replica|peer|cluster"):
        await apply_streams(bus.js, settings.stream_replicas, specs=(EVENTS,))
    assert (await bus.js.stream_info(EVENTS.name)).config.num_replicas == 1


async def test_a_changed_spec_is_updated(bus: Bus) -> None:
    changed = dataclasses.replace(EVENTS, duplicate_window_seconds=60)
    assert await apply_streams(bus.js, specs=(changed,)) == [(EVENTS.name, "updated")]
    config = (await bus.js.stream_info(EVENTS.name)).config
    assert config.duplicate_window == 60
    assert await apply_streams(bus.js, specs=(changed,)) == [(EVENTS.name, "unchanged")]


async def test_check_streams_names_the_missing_ones_and_what_to_run(bus: Bus) -> None:
    await delete_all(bus)
    with pytest.raises(MissingStreams, match=r"EPM_EVENTS.*epm streams apply"):
        await check_streams(bus.js, (EVENTS.name,))
