"""Projections: SQLite read models fed from EPM_EVENTS, exactly once.

How "nothing lost, nothing twice" holds:
- one SQLite transaction per batch holds the projection writes, the processed
  event ids and the checkpoint (last stream sequence); a crash mid-batch rolls
  all three back and the batch is delivered again from the checkpoint;
- an event id seen before (the same event published again days later, outside
  JetStream's duplicate window) is skipped by the processed-id table;
- a missing file means checkpoint 0: the projection is rebuilt from the stream.

The consumer is an *ordered* consumer (no acks, in order, reset on gaps)
starting after the checkpoint. Its callback only buffers. A backlog is written
in a dedicated writer thread while the next batch arrives (pipelined), so the
event loop never waits for the disk; a batch of a few events (the steady state
of a live system) is written right on the loop, where it costs less than the
two thread hand-overs, and never waits for a lock there.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from epm_events.catalog import EVENT_TYPES, Event
from epm_events.codec import DecodeError, decode_event
from epm_events.envelope import Envelope
from epm_events.streams import EVENTS
from epm_events.subjects import ALL_EVENTS, event_type_filter
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from epm_service.deadletter import dead_letter
from epm_service.metrics import EVENTS_APPLIED, EVENTS_SKIPPED, PROJECTION_POSITION
from epm_service.natsfast import AckReply, ordered_callback
from epm_service.publisher import APPENDED
from epm_service.worker import cancel_and_wait

log = logging.getLogger(__name__)

T = TypeVar("T")

BUSY_TIMEOUT_MS = 5000
GATHER_UP_TO = 16
"""Default of ``Projection.gather_up_to``."""
INLINE_BATCH = 2 * GATHER_UP_TO
"""Live batches up to this size are written on the event loop (``Projector``). Twice what a
gathering waits for: a gathering ends at 16 events, but the read that brought the
sixteenth often brought a few more before the drain ran, and a third of the online row's
batches (17-23 events) took the writer thread's hop, two thread wake-ups and the GIL
handed over twice (bench/README.md, "Online request", session 11)."""
CHECKPOINT_SECONDS = 1.0
"""How often a Projector moves its WAL into the database file: a passive checkpoint on a
connection and thread of its own, beside the writes, never in their way. SQLite's own
auto-checkpoint runs inside whichever commit crosses 1,000 pages, fsync included: on the
event loop, that commit stalled every request behind it for tens of milliseconds, and on
the writer thread it held the projection (and every read-your-writes wait) as long."""
WAL_TRUNCATE_BYTES = 16 * 1024 * 1024
"""A passive checkpoint never starts the WAL over while commits keep coming (SQLite only
rewinds it when a checkpoint finished and no commit landed since): past this size the
checkpointer truncates it, waiting at most ``WAL_TRUNCATE_WAIT_MS`` for the writer (an
inline write that finds the lock taken goes to the writer thread meanwhile)."""
WAL_TRUNCATE_WAIT_MS = 200
COALESCE_SECONDS = 0.02
"""Default of ``Projection.coalesce_seconds``. At an online request's pace each event came
alone and cost a commit of its own (every b-tree page it touched written to the WAL, twice
per request); gathered under load, a commit carries several and shares their pages
(bench/README.md, "Online request"). 5 ms at first; 20 ms took another 5% of the CPU per
online request across the services (session 8), and nothing waits on it: a read or a
``wait_for`` writes what is gathered at once, and request-svc answers agents from what a
consumer of the decisions receives (epm_service.event_watch), not from what is written."""


class StoredMsg(NamedTuple):
    """A message as read from the stream, before any parsing of its body.

    A NamedTuple, not a dataclass: one is built per message on the event loop,
    where a tuple is cheaper to make, and the collector stops tracking it.
    """

    seq: int
    subject: str
    data: bytes
    msg_id: str | None
    timestamp_ns: int

    @property
    def received_at(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp_ns / 1e9, UTC)


@dataclass(frozen=True, slots=True)
class Applied:
    """What a handler gets besides the event: where and when it was stored."""

    env: Envelope
    seq: int
    received_at: datetime


@dataclass(frozen=True, slots=True)
class Rejected:
    msg: StoredMsg
    reason: str
    detail: str


class StorageUnavailable(RuntimeError):
    """SQLite could not write (locked, disk full, I/O error): retry, do not skip."""


Handler = Callable[[sqlite3.Connection, Any, Applied], None]

BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS _checkpoint (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL);
INSERT OR IGNORE INTO _checkpoint (id, seq) VALUES (1, 0);
CREATE TABLE IF NOT EXISTS _processed (event_id TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS _rejected (
    seq INTEGER PRIMARY KEY, subject TEXT NOT NULL, reason TEXT NOT NULL, detail TEXT NOT NULL
);
"""


class Projection:
    """A read model. Subclasses set ``name`` and ``schema`` and return their handler table.

    ``apply_batch`` may be overridden by a hot path (the audit projection) that
    must not decode what it does not need; it must keep the same contract:
    write, record processed ids, never commit (the runner commits).
    """

    name: str = ""
    schema: str = ""
    max_batch: int = 5000
    """Most events per transaction, unless the Projector is given its own; a hot path
    whose commits are costly (the audit trail's random-key index) asks for more."""
    only_handled: bool = False
    """Subscribe to the event types in ``handlers()`` only (one filter subject each), so
    the rest never cross the wire: for a projection that keeps a few kinds out of many
    (the tenant directory). ``Projector.wait_for`` still answers for any sequence."""
    coalesce_seconds: float = COALESCE_SECONDS
    """Live (a trickle, not a backlog), how long a Projector may gather events before it
    writes them, so one commit carries several: unless someone waits for one of them
    (``Projector.wait_for``), then it writes at once. 0 writes every event as it comes."""
    gather_up_to: int = GATHER_UP_TO
    """A gathering batch is written once it holds this many events, before its time is up:
    half what is written on the event loop (``INLINE_BATCH``), unless a projection prefers
    fewer, larger commits while events flow (the audit trail)."""
    watched: frozenset[str] = frozenset()
    """Event names whose last committed sequence the Projector keeps in ``last_seq_of``,
    so in-memory caches over the projection know cheaply when to reload."""

    def handlers(self) -> Mapping[type[Event], Handler]:
        return {}

    received: Received | None = None
    """What the Projector's observers and reactions decoded as it came, for the writer to take
    (``Received.take``) instead of decoding it again; set by the Projector."""

    def apply_batch(self, conn: sqlite3.Connection, msgs: list[StoredMsg]) -> list[Rejected]:
        table = {cls.NAME: fn for cls, fn in self.handlers().items()}
        rejected: list[Rejected] = []
        received = self.received
        for m in msgs:
            name = m.subject.rsplit(".", 1)[-1]
            handler = table.get(name)
            if handler is None:
                # Not ours, unless the name is not even an event: then nobody will ever read it.
                if name not in EVENT_TYPES:
                    rejected.append(Rejected(m, "unknown_type", f"unknown event name {name!r}"))
                continue
            try:
                # validate before recording the id: a rejected event must not use it up
                env, event = received.take(m) if received is not None else decode_received(m)
                if m.msg_id is not None and env.id != m.msg_id:
                    raise DecodeError("id_mismatch", "Nats-Msg-Id differs from the CloudEvent id")
                if not mark_processed(conn, env.id, m.seq):
                    EVENTS_SKIPPED.labels(self.name).inc()
                    continue
            except DecodeError as exc:
                rejected.append(Rejected(m, exc.reason, exc.detail))
                continue
            handler(conn, event, Applied(env, m.seq, m.received_at))
        return rejected


class Received:
    """Envelopes and events decoded on the event loop as they were received (an observer or a
    reaction needed them), by stream sequence, until the writer takes them: a decision at
    once and request-svc's answer each decoded an event the writer then decoded again.
    Loop and writer thread share it; each dict operation is atomic."""

    LIMIT = 10_000
    """More than a consumer buffers between two writes; past it (a writer stopped with
    decoded events unwritten) it starts over."""

    def __init__(self) -> None:
        self._by_seq: dict[int, tuple[Envelope, Event]] = {}

    def get(self, m: StoredMsg) -> tuple[Envelope, Event]:
        """Decoded once, kept for the writer; DecodeError as ``decode_event``."""
        hit = self._by_seq.get(m.seq)
        if hit is None:
            hit = decode_received(m)
            if len(self._by_seq) >= self.LIMIT:
                self._by_seq.clear()
            self._by_seq[m.seq] = hit
        return hit

    def take(self, m: StoredMsg) -> tuple[Envelope, Event]:
        """What ``get`` decoded for this message (and forget it), else decoded now."""
        hit = self._by_seq.pop(m.seq, None)
        return decode_received(m) if hit is None else hit


def decode_received(m: StoredMsg) -> tuple[Envelope, Event]:
    """A received message's envelope and event: what this process encoded itself, if it
    appended these very bytes (``RecentlyAppended``), else decoded (DecodeError as
    ``decode_event``)."""
    return APPENDED.get(m.msg_id, m.data) or decode_event(m.data)


def mark_processed(conn: sqlite3.Connection, event_id: str, seq: int) -> bool:
    """Record an event id; False if it was applied before (then skip it)."""
    cur = conn.execute(
        "INSERT OR IGNORE INTO _processed (event_id, seq) VALUES (?, ?)", (event_id, seq)
    )
    return cur.rowcount == 1


def open_db(
    path: Path, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS, checkpoints: bool = True
) -> sqlite3.Connection:
    """A connection to a projection's file (autocommit; WAL; no sync per commit).
    ``checkpoints=False`` for a connection that commits on the event loop: SQLite's
    auto-checkpoint (fsync included) would run inside one of its commits; the Projector
    checkpoints the file on a thread of its own instead."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    if not checkpoints:
        conn.execute("PRAGMA wal_autocheckpoint=0")
    return conn


class Projector:
    """Runs one projection: ordered consumer -> buffer -> writer thread -> SQLite."""

    def __init__(
        self,
        js: JetStreamContext,
        projection: Projection,
        path: Path,
        *,
        service: str,
        filter_subject: str = ALL_EVENTS,
        stream: str = EVENTS.name,
        max_batch: int | None = None,
    ) -> None:
        self.js = js
        self.projection = projection
        self.received = projection.received = Received()
        self.path = path
        self.service = service
        self.filter_subject = filter_subject
        self.stream = stream
        self.max_batch = max_batch or projection.max_batch
        self.gather_up_to = min(projection.gather_up_to, self.max_batch)
        self.last_seq_of: dict[str, int] = {}
        self.position = 0
        self._writer = ThreadPoolExecutor(1, thread_name_prefix=f"{projection.name}-writer")
        self.readers = Readers(path, projection.name)
        self._wconn: sqlite3.Connection | None = None
        self._buf: list[StoredMsg] = []
        self._has_msgs = asyncio.Event()
        self._wake = asyncio.Event()  # ends a coalescing wait: a reader waits, or a full batch
        self._wanted = 0  # the highest sequence a wait_for is waiting for
        self._writing: list[StoredMsg] = []  # the batch being written, until it is committed
        self._advanced = asyncio.Condition()
        self._sub: Any = None
        self._task: asyncio.Task[None] | None = None
        self._caught_up = asyncio.Event()
        self._target = 0
        self._last_seq = 0
        self._stopped = False
        self._live = False
        self._checkpointed = time.monotonic()
        self._checkpointing: asyncio.Future[None] | None = None
        self._checkpointer = ThreadPoolExecutor(
            1, thread_name_prefix=f"{projection.name}-checkpoint"
        )
        self._cconn: sqlite3.Connection | None = None
        self._observers: dict[str, list[Callable[[StoredMsg], None]]] = {}
        # settled_through's predicates: how far the received messages were asked, and the
        # sequences, not yet written, of those that matter
        self._settling: dict[Callable[[StoredMsg], bool], tuple[int, list[int]]] = {}
        self._reactions: set[asyncio.Task[None]] = set()
        self.on_commit: Callable[[], None] | None = None
        """Called after each batch is committed, and once it has caught up (a process
        reporting to its parent, epm_service.projection_process). It must not wait."""
        self._filters: list[str] | None = None
        if projection.only_handled and filter_subject == ALL_EVENTS:
            self._filters = sorted(event_type_filter(cls.NAME) for cls in projection.handlers())

    # --- lifecycle --------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.position = await loop.run_in_executor(self._writer, self._open)
        self._last_seq = self.position
        self._settling.clear()  # what is received from here on is asked anew
        PROJECTION_POSITION.labels(self.projection.name).set(self.position)
        info = await self.js.stream_info(self.stream)
        self._target = info.state.last_seq
        if self.position >= self._target:
            self._caught_up.set()
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.position + 1,
            filter_subjects=self._filters,
        )
        self._task = asyncio.create_task(self._drain(), name=f"projector-{self.projection.name}")
        self._task.add_done_callback(self._on_drain_done)
        self._sub = await self.js.subscribe(
            self.filter_subject,
            cb=ordered_callback(self._receive),
            ordered_consumer=True,
            config=config,
            pending_msgs_limit=-1,
            pending_bytes_limit=-1,
        )
        if not self._caught_up.is_set():
            # A filter may match nothing (more) in the stream: then no message ever arrives
            # with pending == 0 to say so. Ask the consumer whether anything is on its way.
            cinfo = await self._sub.consumer_info()
            delivered = cinfo.delivered.consumer_seq if cinfo.delivered else 0
            if not cinfo.num_pending and not delivered:
                self._caught_up.set()
        log.info(
            "projection started",
            extra={
                "projection": self.projection.name,
                "position": self.position,
                "stream_last_seq": self._target,
                "path": str(self.path),
            },
        )

    async def stop(self) -> None:
        """Stop consuming and close the file; what is not committed is delivered again later."""
        if self._stopped:
            return
        self._stopped = True
        if self._sub is not None:
            with contextlib.suppress(Exception):  # the connection may be closed already
                await self._sub.unsubscribe()
            self._sub = None
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        for reaction in list(self._reactions):
            await cancel_and_wait(reaction)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._checkpointer, self._close_checkpointer)
        self._checkpointer.shutdown(wait=True)
        await loop.run_in_executor(self._writer, self._close)
        self._writer.shutdown(wait=True)
        self.readers.close()

    async def wait_caught_up(self, timeout: float | None = None) -> None:
        """Until everything that was in the stream at start is applied."""
        async with asyncio.timeout(timeout):
            await self._wait_caught_up()

    async def _wait_caught_up(self) -> None:
        while not self._caught_up.is_set():
            try:
                async with asyncio.timeout(1.0):
                    await self._caught_up.wait()
            except TimeoutError:
                await self._check_caught_up()

    async def _check_caught_up(self) -> None:
        """Fallback if the pending == 0 signal was missed (e.g. across an ordered-consumer
        reset): the consumer has nothing pending and everything it delivered is applied."""
        if self._sub is None or self._buf:
            return
        try:
            cinfo = await self._sub.consumer_info()
        except Exception:
            return
        delivered = cinfo.delivered.stream_seq if cinfo.delivered else 0
        if not cinfo.num_pending and not self._buf and self.position >= (delivered or 0):
            self._caught_up.set()
            if self.on_commit is not None:
                self.on_commit()

    @property
    def caught_up(self) -> bool:
        return self._caught_up.is_set()

    async def wait_for(self, seq: int, timeout: float = 5.0) -> bool:
        """Until the projection has applied stream sequence ``seq`` (read-your-writes).

        ``seq`` must be in the stream already (an append's ack, a stream's last sequence).
        A filtered projection may never see that very sequence (not its kind of event):
        it is as of ``seq`` once its consumer has nothing pending and all it was given is
        applied."""
        if self.position >= seq:
            return True
        if seq > self._wanted:
            self._wanted = seq
            self._wake.set()  # no coalescing while someone waits: write what is buffered now
        if self._filters is None:
            return await self.wait_past(seq - 1, timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.position < seq:
            if await self._all_applied():
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            async with self._advanced:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(remaining, 0.05)):
                        await self._advanced.wait()
        return True

    def settled_through(self, seq: int, matters: Callable[[StoredMsg], bool]) -> bool:
        """Whether what is committed already answers as of stream sequence ``seq`` for the
        events ``matters`` picks: everything up to ``seq`` has arrived, and none of it that
        is still gathering (or being written) matters. A hot path that reads a few kinds of
        event checks this before ``wait_for``, which would end the gathering."""
        if self.position >= seq:
            return True
        if self._filters is not None or self._last_seq < seq:
            return False  # a filtered consumer never says it has seen ``seq``
        # Each received message is asked once per predicate, not at every call (a decision
        # at once asks about everything its view still gathers, every request).
        checked, hits = self._settling.setdefault(matters, (0, []))
        newest = checked
        for m in itertools.chain(reversed(self._buf), reversed(self._writing)):
            if m.seq <= checked:
                break
            newest = max(newest, m.seq)
            if matters(m):
                hits.append(m.seq)
        position = self.position
        hits[:] = [h for h in hits if h > position]
        self._settling[matters] = (newest, hits)
        return not any(h <= seq for h in hits)

    async def wait_past(self, position: int, timeout: float = 5.0) -> bool:
        """Until the projection commits a batch beyond ``position``: for workers that
        follow what it applies (an outbox relay, a dispatcher), not for a sequence of the
        stream (that is ``wait_for``)."""
        if self.position > position:
            return True
        async with self._advanced:
            try:
                async with asyncio.timeout(timeout):
                    await self._advanced.wait_for(lambda: self.position > position)
            except TimeoutError:
                return False
        return True

    async def _all_applied(self) -> bool:
        """Every message the stream holds for this consumer now is applied."""
        if self._sub is None or self._buf or self._has_msgs.is_set():
            return False
        try:
            cinfo = await self._sub.consumer_info()
        except Exception:
            return False
        delivered = cinfo.delivered.stream_seq if cinfo.delivered else 0
        return not cinfo.num_pending and not self._buf and self.position >= (delivered or 0)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a query on a read connection off the event loop, after writing what the
        projection has received (a batch gathering for ``coalesce_seconds``): a query
        answers with every event this service has seen, as if nothing were gathered."""
        await self.write_received()
        return await self.read_committed(fn)

    async def read_committed(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a query on a read connection off the event loop, on what is committed: what
        is still gathering stays gathering. For a worker that follows the projection's
        commits (``wait_past``) and must not end every gathering it follows."""
        return await self.readers.read(fn)

    async def write_received(self, timeout: float = 5.0) -> None:
        """Until what the consumer has received so far is committed (a gathering ends)."""
        received = self._last_seq
        if self.position >= received or self._task is None:
            return
        if received > self._wanted:
            self._wanted = received
            self._wake.set()
        await self.wait_past(received - 1, timeout)

    def read_now(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a SMALL indexed query right here on the event loop.

        For hot paths (an online request's device or grant lookup) where the hop
        to a reader thread costs more than the query; anything that may scan
        belongs in ``read``. WAL readers never wait for the writer. It sees what is
        committed, not a batch still gathering: ``wait_for`` first where that matters.
        """
        return self.readers.read_now(fn)

    # --- what is received, as it comes ---------------------------------------

    def decoded(self, m: StoredMsg) -> tuple[Envelope, Event]:
        """A received message's envelope and event (DecodeError if it has none), for an
        observer or a reaction: decoded once, the writer takes it from here. What is being
        written or is written already is decoded on its own."""
        writing = self._writing
        if m.seq <= self.position or (writing and m.seq <= writing[-1].seq):
            return decode_received(m)
        return self.received.get(m)

    def observe(self, names: Iterable[str], fn: Callable[[StoredMsg], None]) -> None:
        """Call ``fn`` for every event of these names the consumer delivers from now on, in
        nats-py's read loop as it is received, before it is written: for a waiter that only
        needs to learn that the event exists (``react`` is built on it). It must not wait,
        and it sees replays too."""
        for name in names:
            self._observers.setdefault(name, []).append(fn)

    def react(
        self, names: Iterable[str], handler: Callable[[StoredMsg], Coroutine[Any, Any, None]]
    ) -> None:
        """Run ``handler`` in a task of its own for every event of these names received
        from now on: a policy that acts on new events (approval-svc deciding a new request
        by its rules). Call it once the projection has caught up: what it replays before
        (a restart, a rebuilt file) is history, not news. Handlers run concurrently and
        must be idempotent (another replica reacts too)."""

        def start(m: StoredMsg) -> None:
            task = asyncio.get_running_loop().create_task(handler(m))
            self._reactions.add(task)
            task.add_done_callback(self._reaction_done)

        self.observe(names, start)

    def _reaction_done(self, task: asyncio.Task[None]) -> None:
        self._reactions.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "a reaction to an event failed",
                exc_info=task.exception(),
                extra={"projection": self.projection.name},
            )

    def _tell_observers(self, m: StoredMsg) -> None:
        fns = self._observers.get(m.subject[m.subject.rfind(".") + 1 :])
        for fn in fns or ():
            try:
                fn(m)
            except Exception:
                log.exception(
                    "an observer of received events failed",
                    extra={"projection": self.projection.name, "seq": m.seq},
                )

    # --- event loop side --------------------------------------------------

    def _receive(self, subject: str, ack: AckReply, data: bytes, msg_id: str | None) -> None:
        """One message of the consumer, handed over in nats-py's read loop
        (``natsfast.ordered_callback``): buffered, nothing more. It never waits: every other
        subscription of the connection would wait behind it. A writer behind the consumer
        lets the buffer grow, as nats-py's own queue grew before (a rebuild)."""
        seq, _, ts_ns, pending = ack
        if seq <= self._last_seq:
            # nats-py resets an ordered consumer that lost its place at "last seen + 1", and
            # before the first message that is sequence 1: never hand the writer the past twice.
            return
        self._last_seq = seq
        m = StoredMsg(seq, subject, data, msg_id, ts_ns)
        self._buf.append(m)
        self._live = pending == 0  # nothing behind this message: a trickle, not a backlog
        if pending == 0:
            self._target = 0  # the stream end as we knew it is in the buffer now
        if self._observers:
            # Before the writer is woken: what they start runs first (the event loop runs
            # ready callbacks in order), not behind a write of the whole batch on the loop.
            self._tell_observers(m)
        self._has_msgs.set()
        if len(self._buf) >= self.gather_up_to:
            self._wake.set()

    def _on_drain_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "projection stopped applying events; restart the service",
                exc_info=task.exception(),
                extra={"projection": self.projection.name, "position": self.position},
            )

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._has_msgs.wait()
            await self._coalesce()
            batch = self._buf[: self.max_batch]
            del self._buf[: self.max_batch]
            if not self._buf:
                self._has_msgs.clear()
            if not batch:
                continue
            self._writing = batch
            rejected = await self._write_batch(loop, batch)
            self._maybe_checkpoint(loop)
            for r in rejected:
                try:
                    await dead_letter(
                        self.js,
                        self.service,
                        payload=r.msg.data,
                        subject=r.msg.subject,
                        reason=r.reason,
                        detail=r.detail,
                        stream=self.stream,
                        seq=r.msg.seq,
                    )
                except Exception:
                    # the rejection is committed in _rejected already; a missing or full
                    # EPM_DLQ must not stop the projection behind it
                    log.exception(
                        "could not publish a dead letter; it stays in the _rejected table",
                        extra={"projection": self.projection.name, "seq": r.msg.seq},
                    )
            if self.projection.watched:
                watched = self.projection.watched
                for m in batch:
                    name = m.subject.rpartition(".")[2]
                    if name in watched:
                        self.last_seq_of[name] = m.seq
            self.position = batch[-1].seq
            self._writing = []
            PROJECTION_POSITION.labels(self.projection.name).set(self.position)
            EVENTS_APPLIED.labels(self.projection.name).inc(len(batch) - len(rejected))
            if self._target == 0 and not self._buf and not self._caught_up.is_set():
                self._caught_up.set()
                log.info(
                    "projection caught up",
                    extra={"projection": self.projection.name, "position": self.position},
                )
            if self.on_commit is not None:
                self.on_commit()
            async with self._advanced:
                self._advanced.notify_all()

    async def _coalesce(self) -> None:
        """Live and with nobody waiting, give the next events ``coalesce_seconds`` to join
        the batch (a backlog is batched by the consumer already)."""
        wait = self.projection.coalesce_seconds
        if not wait or not self._live or self._wanted > self.position:
            return
        self._wake.clear()
        if len(self._buf) >= self.gather_up_to:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._wake.wait()

    async def _write_batch(
        self, loop: asyncio.AbstractEventLoop, batch: list[StoredMsg]
    ) -> list[Rejected]:
        """A few live events are written right here: at an online request's pace the hop to
        the writer thread and back (two thread wake-ups, the GIL handed over twice) costs
        more than the write. A backlog (the consumer says more is pending) goes to the
        writer thread, pipelined with the consumer, so batches grow while it writes.
        Either way only this task writes, one batch at a time."""
        if self._live and len(batch) <= INLINE_BATCH and self._wconn is not None:
            # Never wait for a lock on the loop: if another connection holds it, the
            # writer thread waits instead (busy timeout, then retries with backoff).
            self._wconn.execute("PRAGMA busy_timeout=0")
            try:
                return self._write(batch)
            except StorageUnavailable:
                pass
            finally:
                self._wconn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        return await self._write_with_retry(loop, batch)

    async def _write_with_retry(
        self, loop: asyncio.AbstractEventLoop, batch: list[StoredMsg]
    ) -> list[Rejected]:
        """Storage trouble (locked, full disk) is retried with backoff, never dead-lettered:
        the events are fine, and skipping them would lose them."""
        delay = 0.1
        while True:
            try:
                return await loop.run_in_executor(self._writer, self._write, batch)
            except StorageUnavailable as exc:
                log.error(
                    "projection storage unavailable; retrying in %.1fs: %s",
                    delay,
                    exc,
                    extra={"projection": self.projection.name},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    # --- writer thread ----------------------------------------------------

    def _open(self) -> int:
        conn = open_db(self.path, checkpoints=False)  # _checkpoint does it, off the loop
        conn.executescript(BOOKKEEPING)
        if self.projection.schema:
            conn.executescript(self.projection.schema)
        self._wconn = conn
        row = conn.execute("SELECT seq FROM _checkpoint WHERE id = 1").fetchone()
        return int(row[0])

    def _maybe_checkpoint(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._checkpointing is not None or (
            time.monotonic() - self._checkpointed < CHECKPOINT_SECONDS
        ):
            return
        self._checkpointed = time.monotonic()
        self._checkpointing = loop.run_in_executor(self._checkpointer, self._checkpoint)
        self._checkpointing.add_done_callback(self._checkpoint_done)

    def _checkpoint_done(self, fut: asyncio.Future[None]) -> None:
        self._checkpointing = None
        if not fut.cancelled() and fut.exception() is not None:
            log.warning(
                "WAL checkpoint failed; the next one retries: %s",
                fut.exception(),
                extra={"projection": self.projection.name},
            )

    def _checkpoint(self) -> None:
        """Passive: copies what no reader still needs and waits for nobody (its own thread
        and connection; the writes go on meanwhile)."""
        if self._cconn is None:
            self._cconn = open_db(self.path, busy_timeout_ms=WAL_TRUNCATE_WAIT_MS)
        self._cconn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        try:
            wal = os.path.getsize(f"{self.path}-wal")
        except OSError:
            return
        if wal > WAL_TRUNCATE_BYTES:
            self._cconn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def _close_checkpointer(self) -> None:
        if self._cconn is not None:
            self._cconn.close()
            self._cconn = None

    def _close(self) -> None:
        if self._wconn is not None:
            self._wconn.close()
            self._wconn = None

    def _write(self, batch: list[StoredMsg]) -> list[Rejected]:
        conn = self._wconn
        assert conn is not None
        started = time.perf_counter()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:  # locked by another connection
            raise StorageUnavailable(str(exc)) from exc
        try:
            rejected = self.projection.apply_batch(conn, batch)
        except sqlite3.OperationalError as exc:
            # The disk, not an event: locked, full, I/O error. Retry the batch later.
            conn.execute("ROLLBACK")
            raise StorageUnavailable(str(exc)) from exc
        except Exception:
            conn.execute("ROLLBACK")
            log.exception(
                "batch failed; retrying message by message",
                extra={"projection": self.projection.name},
            )
            conn.execute("BEGIN IMMEDIATE")
            try:
                rejected = self._write_one_by_one(conn, batch)
            except sqlite3.OperationalError as exc:
                conn.execute("ROLLBACK")
                raise StorageUnavailable(str(exc)) from exc
        for r in rejected:
            conn.execute(
                "INSERT OR REPLACE INTO _rejected (seq, subject, reason, detail) VALUES (?,?,?,?)",
                (r.msg.seq, r.msg.subject, r.reason, r.detail),
            )
        conn.execute("UPDATE _checkpoint SET seq = ? WHERE id = 1", (batch[-1].seq,))
        conn.execute("COMMIT")
        log.debug(
            "batch committed",
            extra={
                "projection": self.projection.name,
                "events": len(batch),
                "ms": round((time.perf_counter() - started) * 1000, 2),
            },
        )
        return rejected

    def _write_one_by_one(self, conn: sqlite3.Connection, batch: list[StoredMsg]) -> list[Rejected]:
        """A handler raised: isolate the culprit so the good messages behind it still apply."""
        rejected: list[Rejected] = []
        for m in batch:
            conn.execute("SAVEPOINT one")
            try:
                rejected.extend(self.projection.apply_batch(conn, [m]))
                conn.execute("RELEASE one")
            except sqlite3.OperationalError:
                raise
            except Exception as exc:
                conn.execute("ROLLBACK TO one")
                conn.execute("RELEASE one")
                rejected.append(Rejected(m, "handler_error", f"{type(exc).__name__}: {exc}"))
        return rejected


class Readers:
    """Read connections of a projection's file: two reader threads, and one on the event
    loop for small indexed queries. WAL readers never wait for the writer, whichever
    process writes."""

    def __init__(self, path: Path, name: str) -> None:
        self.path = path
        self._pool = ThreadPoolExecutor(2, thread_name_prefix=f"{name}-reader")
        self._conns: dict[int, sqlite3.Connection] = {}
        self._loop_conn: sqlite3.Connection | None = None

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn`` on a reader thread's connection, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._read, fn)

    def read_now(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn`` on the loop's own connection, right here."""
        if self._loop_conn is None:
            self._loop_conn = _read_connection(self.path)
        return fn(self._loop_conn)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()
        if self._loop_conn is not None:
            self._loop_conn.close()
            self._loop_conn = None

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        key = threading.get_ident()
        conn = self._conns.get(key)
        if conn is None:
            conn = self._conns[key] = _read_connection(self.path)
        return fn(conn)


def _read_connection(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return conn
