"""Messages handed straight to a subscriber (epm_service.natsfast: ``ordered_callback``,
``core_callback``) on a real nats-server: in order, each once, an ordered consumer still
resets on a lost message, and messages nats-py queued first are never overtaken."""

from __future__ import annotations

import asyncio

import pytest
from epm_service import natsfast
from epm_service.bus import Bus
from epm_service.natsfast import MSG_ID, AckReply, core_callback, ordered_callback
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy, StreamConfig

pytestmark = pytest.mark.integration

STREAM = "DISPATCH"


class Received:
    """What an ordered handler got: stream sequences and message ids, the past skipped as
    the Projector skips it (an ordered consumer resets at "last seen + 1")."""

    def __init__(self, expected: int) -> None:
        self.seqs: list[int] = []
        self.ids: list[str | None] = []
        self.expected = expected
        self.done = asyncio.Event()
        self.some = asyncio.Event()  # ten or more

    def __call__(self, subject: str, ack: AckReply, data: bytes, msg_id: str | None) -> None:
        seq = ack.stream_seq
        if self.seqs and seq <= self.seqs[-1]:
            return
        self.seqs.append(seq)
        self.ids.append(msg_id)
        if len(self.seqs) >= 10:
            self.some.set()
        if len(self.seqs) == self.expected:
            self.done.set()


async def stream_of(bus: Bus, count: int) -> None:
    await bus.js.add_stream(StreamConfig(name=STREAM, subjects=["dispatch.>"]))
    for i in range(count):
        await bus.js.publish_async(f"dispatch.{i % 7}", b"m%d" % i, headers={MSG_ID: f"id-{i}"})
    await bus.js.publish_async_completed()


async def subscribe(bus: Bus, handler: Received) -> object:
    return await bus.js.subscribe(
        "dispatch.>",
        stream=STREAM,
        cb=ordered_callback(handler),
        ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        pending_msgs_limit=-1,
        pending_bytes_limit=-1,
    )


async def test_an_ordered_consumer_hands_every_message_over_in_order_with_its_id(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    await stream_of(bus, 3000)
    queued = 0
    original = natsfast.ORIGINAL_PROCESS_MSG

    async def counting(self, sid, subject, reply, data, headers):  # type: ignore[no-untyped-def]
        nonlocal queued
        if not headers or headers[8] != 32:  # a data message nats-py handled its way
            queued += 1
        await original(self, sid, subject, reply, data, headers)

    monkeypatch.setattr(natsfast, "ORIGINAL_PROCESS_MSG", counting)
    got = Received(3000)
    sub = await subscribe(bus, got)
    async with asyncio.timeout(30):
        await got.done.wait()
    assert got.seqs == list(range(1, 3001))
    assert got.ids == [f"id-{i}" for i in range(3000)]
    assert queued < 100  # at most the first few, before nats-py had set the consumer up
    await sub.unsubscribe()  # type: ignore[attr-defined]


async def test_a_lost_message_resets_the_ordered_consumer_and_nothing_is_skipped(
    bus: Bus,
) -> None:
    await stream_of(bus, 500)
    got = Received(500)
    sub = await subscribe(bus, got)
    async with asyncio.timeout(30):
        await got.some.wait()
    # A message from further on arrives as if those between were lost on the way.
    core = sub._sub  # type: ignore[attr-defined]
    jsi = core._jsi
    skipped = jsi._dseq + 5
    reply = f"$JS.ACK.{STREAM}.c.1.{jsi._sseq + 6}.{skipped}.1700000000000000000.0"
    await bus.nc._process_msg(core._id, b"dispatch.0", reply.encode(), b"late", b"")
    async with asyncio.timeout(30):
        await got.done.wait()
    assert got.seqs == list(range(1, 501))  # the consumer started over; none missing, none twice
    await sub.unsubscribe()  # type: ignore[attr-defined]


async def test_messages_queued_the_usual_way_are_not_overtaken(bus: Bus) -> None:
    got: list[bytes] = []
    two = asyncio.Event()

    def handle(subject: str, data: bytes, status: str | None) -> None:
        got.append(data)
        if len(got) == 2:
            two.set()

    sub = await bus.nc.subscribe("queued.x", cb=core_callback(handle))
    # one message waits on nats-py's queue (as before a subscription is set up) ...
    sub._pending_queue.put_nowait(Msg(bus.nc, subject="queued.x", data=b"first"))
    # ... so the next one must queue behind it, not go straight to the handler
    await bus.nc._process_msg(sub._id, b"queued.x", b"", b"second", b"")
    assert got == []
    async with asyncio.timeout(5):
        await two.wait()
    assert got == [b"first", b"second"]
    # with nothing queued, a message is handed over at once, in the read loop
    await bus.nc._process_msg(sub._id, b"queued.x", b"", b"third", b"")
    assert got[-1] == b"third"
    await sub.unsubscribe()


async def test_a_status_message_reaches_a_core_handler_with_its_status(bus: Bus) -> None:
    got: list[tuple[bytes, str | None]] = []
    sub = await bus.nc.subscribe("status.x", cb=core_callback(lambda s, d, st: got.append((d, st))))
    await bus.nc._process_msg(sub._id, b"status.x", b"", b"", b"NATS/1.0 503\r\n\r\n")
    await bus.nc._process_msg(sub._id, b"status.x", b"", b"ok", b"NATS/1.0\r\nA: b\r\n\r\n")
    assert got == [(b"", "503"), (b"ok", None)]
    await sub.unsubscribe()
