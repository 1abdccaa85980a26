"""BulkPublisher (epm_service.publisher): a set of messages stored in JetStream with one wait,
on a real nats-server. Every message acknowledged in order, duplicates said so, a refusal
or a lost acknowledgement fails the set in bounded time, and nothing is left behind."""

from __future__ import annotations

import asyncio

import pytest
from epm_events.catalog import TenantCreated
from epm_events.streams import EVENTS
from epm_service.bus import Bus
from epm_service.natsfast import write_now
from epm_service.publisher import (
    EXPECTED_LAST_SUBJECT_SEQ,
    MSG_ID,
    WRONG_LAST_SEQUENCE,
    BulkPublisher,
    ConcurrencyConflict,
    EventPublisher,
)
from nats.aio.msg import Msg
from nats.errors import BadSubjectError
from nats.js.errors import APIError, NoStreamResponseError

pytestmark = pytest.mark.integration

SUBJECT = "epm.evt.acme.device.pc-1.ElevationPerformed"


def messages(n: int, first: int = 0) -> list[tuple[str, bytes, dict[str, str]]]:
    return [(SUBJECT, b'{"n":%d}' % i, {MSG_ID: f"id-{i}"}) for i in range(first, first + n)]


async def test_a_set_is_stored_in_order_and_a_repeat_is_all_duplicates(bus: Bus) -> None:
    bulk = BulkPublisher(bus.nc)
    stored = await bulk.publish(messages(250), timeout=10)
    assert [s.seq for s in stored] == list(range(1, 251))
    assert not any(s.duplicate for s in stored)
    again = await bulk.publish(messages(10, first=245), timeout=10)
    assert [s.duplicate for s in again] == [True] * 5 + [False] * 5
    assert (await bus.js.stream_info(EVENTS.name)).state.messages == 255
    assert not bulk._sets  # nothing kept once a set is done


async def test_sets_published_at_once_each_get_their_own_acknowledgements(bus: Bus) -> None:
    bulk = BulkPublisher(bus.nc)
    results = await asyncio.gather(
        *(bulk.publish(messages(40, first=100 * k), timeout=10) for k in range(20))
    )
    seqs = [s.seq for stored in results for s in stored]
    assert sorted(seqs) == list(range(1, 801))
    for stored in results:  # each set's messages went out in order, on one connection
        assert [s.seq for s in stored] == sorted(s.seq for s in stored)


async def test_a_refused_message_fails_the_set_with_the_servers_error(bus: Bus) -> None:
    bulk = BulkPublisher(bus.nc)
    batch = messages(5)
    subject, payload, headers = batch[3]
    batch[3] = (subject, payload, {**headers, EXPECTED_LAST_SUBJECT_SEQ: "999"})
    with pytest.raises(APIError) as refused:
        await bulk.publish(batch, timeout=10)
    assert refused.value.err_code == WRONG_LAST_SEQUENCE
    assert not bulk._sets


async def test_a_subject_no_stream_takes_fails_the_set(bus: Bus) -> None:
    bulk = BulkPublisher(bus.nc)
    with pytest.raises(NoStreamResponseError):
        await bulk.publish([("nowhere.at.all", b"{}", {MSG_ID: "x"})], timeout=10)


async def test_a_lost_acknowledgement_fails_the_set_in_bounded_time(bus: Bus) -> None:
    """nats-py never fails a publish lost with its server: the set times out instead, and a
    late acknowledgement of it is dropped. (The acknowledgement is what goes missing here,
    taken from the reply subscription; the set's messages are written as one buffer.)"""
    bulk = BulkPublisher(bus.nc)
    await bulk.publish(messages(1), timeout=10)  # subscribed
    deliver = bulk._sub._cb
    lost: list[str] = []

    async def lossy(msg: Msg) -> None:
        if not lost:
            lost.append(msg.subject)
            return
        await deliver(msg)

    bulk._sub._cb = lossy
    try:
        with pytest.raises(TimeoutError):
            await bulk.publish(messages(5, first=10), timeout=0.5)
    finally:
        bulk._sub._cb = deliver
    assert lost and not bulk._sets
    stored = await bulk.publish(messages(5, first=10), timeout=10)  # the retry completes it
    assert [s.duplicate for s in stored] == [True] * 5


async def test_a_set_goes_out_as_client_publish_would_send_it(bus: Bus) -> None:
    """The set is written as one buffer of HPUB commands; a message ``Client.publish`` would
    change or refuse sends the whole set its way (refused there as usual)."""
    sub = await bus.nc.subscribe("bulk.check.>")
    bulk = BulkPublisher(bus.nc)
    sent = [(f"bulk.check.{i}", b"x" * i, {MSG_ID: f"c-{i}", "Epm-Other": "v w"}) for i in range(3)]
    with pytest.raises(TimeoutError):  # no stream takes bulk.check.*: nobody acknowledges
        await bulk.publish(sent, timeout=0.3)
    for subject, payload, headers in sent:
        got = await sub.next_msg(timeout=5)
        assert (got.subject, got.data, got.headers) == (subject, payload, headers)
    assert got.reply.startswith(bulk._inbox)
    odd = [("bulk.check.odd", b"{}", {MSG_ID: " padded "})]
    with pytest.raises(TimeoutError):
        await bulk.publish(odd, timeout=0.3)
    got = await sub.next_msg(timeout=5)
    assert got.headers == {MSG_ID: "padded"}  # nats-py's own trimming: it went that way
    with pytest.raises(BadSubjectError):
        await bulk.publish([("bulk check", b"{}", {MSG_ID: "x"})], timeout=10)
    await sub.unsubscribe()


async def test_a_command_written_at_once_never_overtakes_pending_publishes(bus: Bus) -> None:
    """``natsfast.write_now`` (the online bench's devices) writes a command to the socket
    only when nothing waits in nats-py's pending buffer; with publishes pending it refuses,
    so the order the application published in is the order the server sees."""
    sub = await bus.nc.subscribe("bulk.order.>")
    await bus.nc.flush()
    bulk = BulkPublisher(bus.nc)
    await bulk.publish(messages(1), timeout=10)  # subscribed, nothing pending
    assert write_now(bus.nc, b"PUB bulk.order.now 2\r\nhi\r\n")  # nothing ahead: written
    for i in range(3):  # pending in nats-py's buffer until its flusher's next turn
        await bus.nc.publish(f"bulk.order.{i}", b"%d" % i)
    assert bus.nc._pending
    assert not write_now(bus.nc, b"PUB bulk.order.late 0\r\n\r\n")  # behind them: refused
    stored = await bulk.publish(messages(1, first=1), timeout=10)
    assert stored[0].seq == 2
    await bus.nc.publish("bulk.order.last", b"")
    got = [(await sub.next_msg(timeout=5)).subject for _ in range(5)]
    assert got == [
        "bulk.order.now",
        "bulk.order.0",
        "bulk.order.1",
        "bulk.order.2",
        "bulk.order.last",
    ]
    await sub.unsubscribe()


async def test_an_append_refused_for_its_stream_says_why(bus: Bus) -> None:
    """EventPublisher.append sends the stream it expects; a subject no stream takes is
    refused as nats-py's ``js.publish`` refused it (no stream, not a hang)."""
    publisher = EventPublisher(bus.js, "/epm/test")
    event = TenantCreated(tenant_id="acme", name="Acme", created_by="test")
    [first] = await publisher.append("acme", [event], 0)
    assert (first.seq, first.duplicate) == (1, False)
    [again] = await publisher.append("acme", [event], 1, ids=[first.envelope.id])
    assert (again.seq, again.duplicate) == (1, True)  # the same id again: a duplicate
    with pytest.raises(ConcurrencyConflict):
        await publisher.append("acme", [event], 0)
    with pytest.raises(NoStreamResponseError):
        await publisher._appends().publish([("nowhere.at.all", b"{}", {MSG_ID: "y"})])
