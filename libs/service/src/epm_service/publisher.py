"""Publishing domain events: bulk with publish_async or a BulkPublisher set, commands with
optimistic concurrency."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson
from epm_events.catalog import Event
from epm_events.codec import encode
from epm_events.envelope import Envelope, new_envelope, subject_of
from epm_events.streams import EVENTS
from epm_events.subjects import aggregate_filter
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import APIError, NoStreamResponseError

from epm_service.natsfast import MSG_ID, core_callback, plain_subject

EXPECTED_STREAM = "Nats-Expected-Stream"
EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
EXPECTED_LAST_SUBJECT_SEQ_SUBJECT = "Nats-Expected-Last-Subject-Sequence-Subject"
WRONG_LAST_SEQUENCE = 10071


PUBLISH_ACK_TIMEOUT = 10.0
"""How long a publish_async may wait for the stream's acknowledgement. nats-py never fails
a publish lost with a killed server: without a bound its awaiter would wait forever."""


async def gather_acks(
    futures: Sequence[asyncio.Future[PubAck]], timeout: float = PUBLISH_ACK_TIMEOUT
) -> list[PubAck]:
    """The acknowledgements of publish_async futures, in order, or TimeoutError (and the
    unfinished ones cancelled, freeing their slots among the connection's pending
    publishes). A timeout is transient: publish again with the same Nats-Msg-Ids."""
    try:
        async with asyncio.timeout(timeout):
            return list(await asyncio.gather(*futures))
    finally:
        for fut in futures:
            if not fut.done():
                fut.cancel()


class ConcurrencyConflict(Exception):
    """Someone appended to the aggregate first; reload and decide again (or report 409)."""

    def __init__(self, aggregate: str, expected: int) -> None:
        super().__init__(f"{aggregate} changed since sequence {expected}")
        self.aggregate = aggregate
        self.expected = expected


class RecentlyAppended:
    """What this process appended lately, as it encoded it: a projection of the same process
    that receives one of these events back takes the envelope and event from here instead
    of decoding the bytes again (request-svc's store its RequestCreated, approval-svc's
    view its Approved; bench/README.md, "Online request", session 11). Only the very bytes
    that were encoded match, so what a projection gets is what decoding would give.
    Shared by the event loop and writer threads; each dict operation is atomic."""

    LIMIT = 1024
    """More than a service appends between publishing one and receiving it back (about a
    second of appends at the online row's rate; a replay's records go by a BulkPublisher,
    not here); a few megabytes at most."""

    def __init__(self) -> None:
        # An OrderedDict: a plain dict's oldest key, ``next(iter(d))``, walks past the slots
        # of every key deleted before it (about 1 µs an append here, against 0.2).
        self._by_id: OrderedDict[str, tuple[bytes, Envelope, Event]] = OrderedDict()

    def remember(self, payload: bytes, env: Envelope, event: Event) -> None:
        by_id = self._by_id
        if len(by_id) >= self.LIMIT:
            with contextlib.suppress(KeyError):
                by_id.popitem(last=False)  # the oldest
        by_id[env.id] = (payload, env, event)

    def get(self, msg_id: str | None, payload: bytes) -> tuple[Envelope, Event] | None:
        hit = self._by_id.get(msg_id) if msg_id else None
        if hit is None or hit[0] != payload:
            return None
        return hit[1], hit[2]


APPENDED = RecentlyAppended()
"""This process's: every EventPublisher remembers its appends here."""


@dataclass(frozen=True, slots=True)
class Appended:
    envelope: Envelope
    seq: int
    duplicate: bool


class EventPublisher:
    def __init__(self, js: JetStreamContext, source: str) -> None:
        self.js = js
        self.source = source
        self._acks: BulkPublisher | None = None

    def _appends(self) -> BulkPublisher:
        """Appends wait for their acknowledgement one by one; they go as one-message sets of
        a BulkPublisher: nats-py's ``js.publish`` makes a reply inbox, a ``wait_for``, a JSON
        decode and a PubAck dataclass per append, a third of an append's client CPU here
        (bench/README.md, "Online request", session 6)."""
        if self._acks is None:
            self._acks = BulkPublisher(self.js._nc)
        return self._acks

    def envelope(self, event: Event, tenant: str, id: str | None = None) -> Envelope:
        return new_envelope(event, tenant=tenant, source=self.source, id=id)

    async def append(
        self,
        tenant: str,
        events: Sequence[Event],
        expected_last_seq: int,
        ids: Sequence[str | None] | None = None,
    ) -> list[Appended]:
        """Append events of ONE aggregate, only if its last sequence is still ``expected_last_seq``.

        Both expected-last-subject-sequence headers are sent, with the aggregate's
        wildcard subject, so appends of *different* event types race correctly:
        exactly one of N concurrent appends with the same expectation succeeds.
        ``0`` means "the aggregate must not exist yet".
        """
        if not events:
            return []
        first = events[0]
        filt = aggregate_filter(tenant, first.AGGREGATE, first.aggregate_id)
        out: list[Appended] = []
        expected = expected_last_seq
        for i, event in enumerate(events):
            if (event.AGGREGATE, event.aggregate_id) != (first.AGGREGATE, first.aggregate_id):
                raise ValueError("append() takes events of one aggregate")
            env = self.envelope(event, tenant, ids[i] if ids else None)
            payload = encode(env)
            APPENDED.remember(payload, env, event)
            ack = await append_encoded(
                self._appends(), subject_of(env), payload, env.id, filt, expected
            )
            out.append(Appended(env, ack.seq, ack.duplicate))
            expected = ack.seq
        return out

    async def publish(self, envelopes: Sequence[Envelope], window: int = 5000) -> list[int]:
        """Publish many envelopes with publish_async; returns their stream sequences in order."""
        seqs: list[int] = []
        futures: list[asyncio.Future[PubAck]] = []
        for env in envelopes:
            fut = await self.js.publish_async(
                subject_of(env), encode(env), headers={MSG_ID: env.id}
            )
            futures.append(fut)
            if len(futures) >= window:
                seqs.extend(a.seq for a in await gather_acks(futures))
                futures = []
        if futures:
            seqs.extend(a.seq for a in await gather_acks(futures))
        return seqs


async def append_encoded(
    bulk: BulkPublisher,
    subject: str,
    payload: bytes,
    msg_id: str,
    aggregate: str,
    expected: int,
    timeout: float = PUBLISH_ACK_TIMEOUT,
) -> Stored:
    """One encoded event appended to EPM_EVENTS only if its aggregate (``aggregate``: the
    aggregate's wildcard subject) still ends at sequence ``expected``, else
    ConcurrencyConflict. Both expected-last-subject-sequence headers go with it (see
    ``EventPublisher.append``)."""
    headers = {
        MSG_ID: msg_id,
        EXPECTED_STREAM: EVENTS.name,
        EXPECTED_LAST_SUBJECT_SEQ: str(expected),
        EXPECTED_LAST_SUBJECT_SEQ_SUBJECT: aggregate,
    }
    try:
        [stored] = await bulk.publish([(subject, payload, headers)], timeout)
    except APIError as exc:
        if exc.err_code == WRONG_LAST_SEQUENCE:
            raise ConcurrencyConflict(aggregate, expected) from None
        raise
    return stored


class Stored(NamedTuple):
    """JetStream's acknowledgement of one message of a ``BulkPublisher`` set."""

    seq: int
    duplicate: bool


class _AckSet:
    __slots__ = ("done", "left", "stored")

    def __init__(self, size: int, done: asyncio.Future[list[Stored]]) -> None:
        self.stored: list[Stored | None] = [None] * size
        self.left = size
        self.done = done


class BulkPublisher:
    """Publishes a set of messages to JetStream and awaits their acknowledgements as one.

    ``publish_async`` keeps, per message, a future, a done-callback and a slot of the
    connection's pending-publish semaphore, and its caller a timeout per future; for a
    handler that publishes a hundred events and must know them all stored before it
    answers (a replayed offline log), that bookkeeping costs more than the publish, and
    a thousand such handlers at once queue on the semaphore. Here the messages of a set
    share one future; acknowledgements arrive on one reply subscription per publisher,
    each reply subject naming its set and its message.

    The set is stored, or ``publish`` raises: the first refusal (``APIError``), no stream
    (``NoStreamResponseError``), or ``TimeoutError`` if acknowledgements stop coming (a
    lost connection or server: nats-py never fails those). Then some messages may be
    stored and others not; publish the set again (``Nats-Msg-Id`` makes that idempotent).
    """

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self._inbox = ""
        self._sub: Any = None
        self._sets: dict[str, _AckSet] = {}
        self._next = 0

    async def publish(
        self,
        messages: Sequence[tuple[str, bytes, dict[str, str]]],
        timeout: float = PUBLISH_ACK_TIMEOUT,
    ) -> list[Stored]:
        """``(subject, payload, headers)`` each; their acknowledgements, in order."""
        if not messages:
            return []
        if self._sub is None:
            self._inbox = self.nc.new_inbox()
            self._sub = await self.nc.subscribe(
                f"{self._inbox}.*.*", cb=core_callback(self._on_ack)
            )
        self._next += 1
        token = str(self._next)
        loop = asyncio.get_running_loop()
        acks = _AckSet(len(messages), loop.create_future())
        self._sets[token] = acks
        reply = f"{self._inbox}.{token}."
        # A timer that fails the set, not ``asyncio.timeout``: its context manager is a
        # few dozen lines of Python per use, a twentieth of approval-svc's CPU per online
        # request (one append each).
        expiry = loop.call_later(timeout, _expire, acks.done)
        try:
            commands = self._commands(messages, reply) if self.nc.is_connected else None
            if commands is not None:
                await self._write(commands, len(messages), sum(len(p) for _, p, _ in messages))
            else:  # reconnecting (nats-py buffers, within its limit), closed, or unusual
                for i, (subject, payload, headers) in enumerate(messages):
                    await self.nc.publish(subject, payload, reply=f"{reply}{i}", headers=headers)
            return await acks.done
        finally:
            expiry.cancel()
            del self._sets[token]

    def _commands(
        self, messages: Sequence[tuple[str, bytes, dict[str, str]]], reply: str
    ) -> bytes | None:
        """The set's HPUB commands as one buffer: what ``Client.publish`` writes for each
        message, without its per-message checks, header buffer and flush test (a third of
        a replayed record's cost of publishing). None if a message is one ``Client.publish``
        would refuse or change (it then goes that way, to be refused as usual)."""
        limit = self.nc.max_payload
        prefix = reply.encode()
        commands: list[bytes] = []
        for i, (subject, payload, headers) in enumerate(messages):
            command = hpub(subject, payload, headers, b"%s%d" % (prefix, i), limit)
            if command is None:
                return None
            commands.append(command)
        return b"".join(commands)

    async def _write(self, commands: bytes, count: int, payload_bytes: int) -> None:
        """Hand the commands to nats-py's pending buffer and its flusher, as ``publish`` does."""
        nc = self.nc
        nc.stats["out_msgs"] += count
        nc.stats["out_bytes"] += payload_bytes
        await nc._send_command(commands)
        if nc._flush_queue is not None and nc._flush_queue.empty():
            await nc._flush_pending()

    def _on_ack(self, subject: str, data: bytes, status: str | None) -> None:
        """An acknowledgement, handed over in nats-py's read loop (``core_callback``)."""
        rest, _, index = subject.rpartition(".")
        acks = self._sets.get(rest[rest.rfind(".") + 1 :])
        if acks is None or acks.done.done():
            return  # a set given up on (timed out, or failed on an earlier message)
        if status == "503":
            acks.done.set_exception(NoStreamResponseError())
            return
        try:
            resp = orjson.loads(data)
            error = resp.get("error")
            if error:
                APIError.from_error(error)  # raises the matching APIError subclass
                raise APIError(**error)
            i = int(index)
            if acks.stored[i] is None:
                acks.left -= 1
            acks.stored[i] = Stored(resp["seq"], bool(resp.get("duplicate")))
        except APIError as exc:
            acks.done.set_exception(exc)
            return
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            acks.done.set_exception(APIError(description=f"unreadable publish ack: {exc!r}"))
            return
        if not acks.left:
            acks.done.set_result(acks.stored)  # type: ignore[arg-type]  # every slot is set


def _expire(done: asyncio.Future[list[Stored]]) -> None:
    if not done.done():
        done.set_exception(TimeoutError("no acknowledgement from JetStream in time"))


def hpub(
    subject: str, payload: bytes, headers: dict[str, str], reply: bytes, max_payload: int
) -> bytes | None:
    """The HPUB command ``Client.publish`` writes for this message (``reply`` may be empty),
    or None for one it would refuse or change (send that one through ``Client.publish``)."""
    block = _header_block(headers)
    if block is None or len(payload) > max_payload or not plain_subject(subject):
        return None
    return b"HPUB %s %s%s%d %d\r\n%s%s\r\n" % (
        subject.encode(),
        reply,
        b" " if reply else b"",
        len(block),
        len(block) + len(payload),
        block,
        payload,
    )


_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
"""A header name nats-py writes as it is (an RFC 7230 token)."""


def _header_block(headers: dict[str, str]) -> bytes | None:
    """``NATS/1.0`` and the headers as nats-py writes them, or None for one it would
    change or refuse (another name, a value with surrounding space or a line break)."""
    block = "NATS/1.0\r\n"
    for name, value in headers.items():
        if not _plain_name(name) or value != value.strip() or "\r" in value or "\n" in value:
            return None
        block += f"{name}: {value}\r\n"
    return (block + "\r\n").encode()


@functools.lru_cache(maxsize=256)
def _plain_name(name: str) -> bool:
    return _HEADER_NAME.fullmatch(name) is not None
