"""Optimistic concurrency: of many concurrent appends to one aggregate, exactly one wins."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from epm_events.catalog import Approved, Denied, Event, RequestCreated, RequestExpired
from epm_events.streams import EVENTS
from epm_events.subjects import aggregate_filter
from epm_service.bus import Bus, connect
from epm_service.publisher import Appended, ConcurrencyConflict, EventPublisher
from epm_service.settings import Settings

CONTENDERS = 50
TECH = {"kind": "technician", "id": "tech-1"}


def request_created(request_id: str) -> RequestCreated:
    return RequestCreated.model_validate(
        {
            "request_id": request_id,
            "device_id": "pc-1",
            "user": "alice",
            "app": {"file_name": "setup.exe", "sha256": "b" * 64},
            "created_at": "2025-01-01T00:00:00Z",
            "expires_at": "2025-01-05T00:00:00Z",
        }
    )


def decision(i: int, request_id: str) -> Event:
    kind = i % 3
    if kind == 0:
        return Approved.model_validate({"request_id": request_id, "scope": "once", "by": TECH})
    if kind == 1:
        return Denied.model_validate({"request_id": request_id, "scope": "once", "by": TECH})
    return RequestExpired(request_id=request_id)


@pytest.fixture
async def connections(bus: Bus, settings: Settings) -> AsyncIterator[list[Bus]]:
    """Ten separate client connections, like ten service replicas."""
    conns = [await connect(settings, name=f"replica-{i}") for i in range(10)]
    yield conns
    for c in conns:
        await c.close()


async def test_one_of_fifty_concurrent_decisions_of_different_types_wins(
    bus: Bus, connections: list[Bus]
) -> None:
    [created] = await EventPublisher(bus.js, "/epm/test").append(
        "acme", [request_created("req-1")], 0
    )

    async def decide(i: int) -> Appended | ConcurrencyConflict:
        pub = EventPublisher(connections[i % len(connections)].js, f"/epm/replica-{i}")
        try:
            [appended] = await pub.append("acme", [decision(i, "req-1")], created.seq)
            return appended
        except ConcurrencyConflict as conflict:
            return conflict

    outcomes = await asyncio.gather(*(decide(i) for i in range(CONTENDERS)))
    winners = [o for o in outcomes if isinstance(o, Appended)]
    conflicts = [o for o in outcomes if isinstance(o, ConcurrencyConflict)]
    assert len(winners) == 1
    assert len(conflicts) == CONTENDERS - 1
    assert all(c.expected == created.seq for c in conflicts)
    assert all(c.aggregate == aggregate_filter("acme", "request", "req-1") for c in conflicts)

    # the stream holds the request and exactly one decision
    info = await bus.js.stream_info(EVENTS.name)
    assert info.state.messages == 2
    stored = await bus.js.get_msg(EVENTS.name, winners[0].seq)
    assert stored.subject.startswith("epm.evt.acme.request.req-1.")


async def test_append_to_a_new_aggregate_expects_zero(bus: Bus) -> None:
    pub = EventPublisher(bus.js, "/epm/test")
    await pub.append("acme", [request_created("req-2")], 0)
    with pytest.raises(ConcurrencyConflict):
        await pub.append("acme", [request_created("req-2")], 0)


async def test_appends_to_other_aggregates_do_not_conflict(bus: Bus) -> None:
    pub = EventPublisher(bus.js, "/epm/test")
    [a] = await pub.append("acme", [request_created("req-a")], 0)
    await pub.append("acme", [request_created("req-b")], 0)
    [decided] = await pub.append("acme", [decision(0, "req-a")], a.seq)
    assert decided.seq > a.seq


async def test_several_events_append_as_a_chain_on_one_aggregate(bus: Bus) -> None:
    pub = EventPublisher(bus.js, "/epm/test")
    appended = await pub.append("acme", [request_created("req-c"), decision(0, "req-c")], 0)
    assert [a.seq for a in appended] == sorted(a.seq for a in appended)
    assert not any(a.duplicate for a in appended)


async def test_append_refuses_events_of_two_aggregates(bus: Bus) -> None:
    pub = EventPublisher(bus.js, "/epm/test")
    with pytest.raises(ValueError, match="one aggregate"):
        await pub.append("acme", [request_created("req-d"), decision(0, "req-e")], 0)
