"""Rejected events go to EPM_DLQ with their reason; the good events around them still apply."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from epm_events.catalog import Event, TenantCreated
from epm_events.streams import DLQ, EVENTS
from epm_service.bus import Bus
from epm_service.deadletter import ORIGINAL_SEQ, ORIGINAL_STREAM, ORIGINAL_SUBJECT, REASON
from epm_service.projection import Applied, Handler, Projector
from epm_service.publisher import MSG_ID
from epm_service.tenants import TenantDirectory, on_tenant_created

SUBJECT = "epm.evt.acme.tenant.{}.TenantCreated"


def cloud_event(event_id: str, type_: str, data: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {
            "specversion": "1.0",
            "id": event_id,
            "source": "/epm/test",
            "type": type_,
            "subject": str(data.get("tenant_id", "x")),
            "time": datetime.now(UTC).isoformat(),
            "tenant": "acme",
            "data": data,
        }
    )


def good(tenant: str) -> tuple[str, bytes, str]:
    data = {"tenant_id": tenant, "name": tenant.upper(), "created_by": "test"}
    return SUBJECT.format(tenant), cloud_event(f"id-{tenant}", "epm.TenantCreated.v2", data), tenant


async def publish_raw(bus: Bus, subject: str, payload: bytes, msg_id: str | None = None) -> int:
    headers = {MSG_ID: msg_id} if msg_id else None
    ack = await bus.js.publish(subject, payload, headers=headers, stream=EVENTS.name)
    return ack.seq


async def dead_letters(bus: Bus, count: int, timeout: float = 5.0) -> list[Any]:
    deadline = time.monotonic() + timeout
    while (await bus.js.stream_info(DLQ.name)).state.messages < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {count} dead letters after {timeout:g}s")
        await asyncio.sleep(0.02)
    return [await bus.js.get_msg(DLQ.name, seq) for seq in range(1, count + 1)]


async def tenant_ids(p: Projector) -> list[str]:
    rows = await p.read(lambda c: c.execute("SELECT id FROM tenants ORDER BY seq").fetchall())
    return [r[0] for r in rows]


class EveryEventTenantDirectory(TenantDirectory):
    """Subscribed to every event, as the request store, approval view and audit trail
    are: an event of an unknown type reaches it (the tenant directory itself filters)."""

    only_handled = False


async def test_each_kind_of_bad_event_is_dead_lettered_with_its_reason_and_the_next_applies(
    bus: Bus, tmp_path: Path
) -> None:
    newer = cloud_event(
        "id-newer", "epm.TenantCreated.v3", {"tenant_id": "n", "name": "N", "created_by": "x"}
    )
    invalid = cloud_event("id-invalid", "epm.TenantCreated.v2", {"tenant_id": "i"})
    bad: list[tuple[str, str, bytes, str | None]] = [
        ("malformed", SUBJECT.format("m"), b"{this is not json", None),
        ("unknown_type", "epm.evt.acme.thing.u.NoSuchEvent", b"{}", None),
        ("unsupported_version", SUBJECT.format("n"), newer, "id-newer"),
        ("invalid_data", SUBJECT.format("i"), invalid, "id-invalid"),
    ]
    p = Projector(bus.js, EveryEventTenantDirectory(), tmp_path / "t.sqlite", service="test")
    await p.start()
    try:
        expected: list[tuple[str, str, int, bytes]] = []
        for n, (reason, subject, payload, msg_id) in enumerate(bad):
            seq = await publish_raw(bus, subject, payload, msg_id)
            expected.append((reason, subject, seq, payload))
            good_subject, good_payload, tenant = good(f"g{n}")
            after = await publish_raw(bus, good_subject, good_payload, f"id-{tenant}")
            assert await p.wait_for(after), f"the good event after {reason} was not applied"

        letters = await dead_letters(bus, len(bad))
        for letter, (reason, subject, seq, payload) in zip(letters, expected, strict=True):
            assert letter.headers[REASON] == reason
            assert letter.headers[ORIGINAL_SUBJECT] == subject
            assert letter.headers[ORIGINAL_STREAM] == EVENTS.name
            assert letter.headers[ORIGINAL_SEQ] == str(seq)
            assert letter.data == payload

        assert await tenant_ids(p) == ["g0", "g1", "g2", "g3"]
        rejected = await p.read(lambda c: c.execute("SELECT reason FROM _rejected").fetchall())
        assert [r[0] for r in rejected] == [b[0] for b in bad]

        # still running
        last_subject, last_payload, _ = good("late")
        assert await p.wait_for(await publish_raw(bus, last_subject, last_payload, "id-late"))
        assert (await tenant_ids(p))[-1] == "late"
    finally:
        await p.stop()


def exploding_tenant_created(conn: sqlite3.Connection, e: TenantCreated, at: Applied) -> None:
    if e.name == "BOOM":
        raise RuntimeError("the handler broke on this one")
    on_tenant_created(conn, e, at)


class FragileTenantDirectory(TenantDirectory):
    def handlers(self) -> Mapping[type[Event], Handler]:
        return {TenantCreated: exploding_tenant_created}


async def test_an_event_whose_handler_raises_is_dead_lettered_and_the_rest_of_its_batch_applies(
    bus: Bus, tmp_path: Path
) -> None:
    seqs = []
    for tenant in ("a", "b", "boom", "c", "d"):
        subject, payload, _ = good(tenant)
        seqs.append(await publish_raw(bus, subject, payload, f"id-{tenant}"))
    p = Projector(bus.js, FragileTenantDirectory(), tmp_path / "t.sqlite", service="test")
    await p.start()  # all five arrive together: one batch
    try:
        await p.wait_caught_up(5)
        assert await tenant_ids(p) == ["a", "b", "c", "d"]
        [letter] = await dead_letters(bus, 1)
        assert letter.headers[REASON] == "handler_error"
        assert letter.headers[ORIGINAL_SEQ] == str(seqs[2])
        assert "the handler broke on this one" in letter.headers["Epm-Dlq-Detail"]
        processed = await p.read(
            lambda c: c.execute("SELECT event_id FROM _processed ORDER BY seq").fetchall()
        )
        assert [r[0] for r in processed] == ["id-a", "id-b", "id-c", "id-d"]
        assert p.position == seqs[-1]
    finally:
        await p.stop()


async def test_a_rejected_event_does_not_use_up_its_id(bus: Bus, tmp_path: Path) -> None:
    """A corrected event published later with the same id is applied, not skipped."""
    broken = cloud_event("id-fixed", "epm.TenantCreated.v2", {"tenant_id": "fixed"})
    await publish_raw(bus, SUBJECT.format("fixed"), broken, "id-fixed")
    p = Projector(bus.js, TenantDirectory(), tmp_path / "t.sqlite", service="test")
    await p.start()
    try:
        await p.wait_caught_up(5)
        subject, payload, _ = good("fixed")
        # no Nats-Msg-Id header, so JetStream's dedup does not drop it: the projection alone
        # decides by the CloudEvent id
        seq = await publish_raw(bus, subject, payload)
        assert await p.wait_for(seq)
        assert await tenant_ids(p) == ["fixed"]
    finally:
        await p.stop()


async def test_projection_keeps_going_when_the_dead_letter_stream_is_missing(
    bus: Bus, tmp_path: Path
) -> None:
    await bus.js.delete_stream(DLQ.name)
    await publish_raw(bus, SUBJECT.format("m"), b"{broken", None)
    subject, payload, _ = good("after")
    seq = await publish_raw(bus, subject, payload, "id-after")
    p = Projector(bus.js, TenantDirectory(), tmp_path / "t.sqlite", service="test")
    await p.start()
    try:
        assert await p.wait_for(seq)
        assert await tenant_ids(p) == ["after"]
        rejected = await p.read(lambda c: c.execute("SELECT seq, reason FROM _rejected").fetchall())
        assert rejected == [(seq - 1, "malformed")]
    finally:
        await p.stop()
