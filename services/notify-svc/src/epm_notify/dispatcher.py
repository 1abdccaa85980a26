"""The dispatcher: tries every pending delivery, records the outcome as events.

- It starts once the store has caught up, so a rebuilt store has already
  closed everything NotificationSent/NotificationFailed recorded: nothing
  already sent goes out again.
- It wakes when the store applies a batch (a new request is announced within
  milliseconds) and when a retry falls due.
- Each channel has its own small concurrency limit, and a channel whose
  limit is used up is not even read from the schedule: a slow or dead
  endpoint holds up only its own notifications. A failed try is rescheduled
  with backoff (RetryPolicy), never waited for in a worker.
- Success appends NotificationSent (with the try's number), the end of the
  tries or a permanent refusal NotificationFailed plus a dead letter, each
  with a deterministic event id. A crash between a delivery and its record
  sends it again with the same webhook-id / Message-ID: at least once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from epm_events.catalog import NotificationFailed, NotificationSent
from epm_events.ids import derived_event_id
from epm_service.deadletter import dead_letter
from epm_service.projection import Projector, open_db
from epm_service.publisher import ConcurrencyConflict, EventPublisher
from epm_service.secretbox import SecretBox, SecretBoxError
from epm_service.worker import cancel_and_wait
from nats.js import JetStreamContext

from epm_notify import store
from epm_notify.channels import Kind
from epm_notify.retry import Delivered, NotDelivered, Outcome, RetryPolicy

log = logging.getLogger(__name__)

SERVICE = "notify-svc"


class Sender(Protocol):
    async def send(
        self, target: dict[str, object], secret: str | None, notification_id: str, payload: bytes
    ) -> Outcome: ...


class Dispatcher:
    def __init__(
        self,
        js: JetStreamContext,
        publisher: EventPublisher,
        projector: Projector,
        box: SecretBox,
        senders: Mapping[Kind, Sender],
        policy: RetryPolicy,
        *,
        per_channel: int = 4,
        max_in_flight: int = 1000,
        max_age: float = 86400.0,
    ) -> None:
        self.js = js
        self.publisher = publisher
        self.projector = projector
        self.box = box
        self.senders = senders
        self.policy = policy
        self.per_channel = per_channel
        self.max_in_flight = max_in_flight
        self.max_age = max_age
        self._in_flight: dict[str, str] = {}  # notification id -> channel id
        self._per_channel: dict[str, int] = {}
        # When each try ended: a schedule read that began before then may predate its write.
        self._ended: dict[str, float] = {}
        self._pruned = 0.0
        self._secrets: dict[str, str | None] = {}
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._conn: sqlite3.Connection | None = None
        # one thread owns the dispatcher's connection: sqlite3 connections are not shared
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="notify-dispatcher")

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._conn = await loop.run_in_executor(self._writer, open_db, self.projector.path)
        self._loop_task = asyncio.create_task(self._run(), name="notify-dispatcher")
        self._watch_task = asyncio.create_task(self._watch(), name="notify-dispatcher-watch")

    async def stop(self) -> None:
        for t in (self._watch_task, self._loop_task, *self._tasks):
            if t is not None:
                t.cancel()
        for t in (self._watch_task, self._loop_task, *self._tasks):
            if t is not None:
                await cancel_and_wait(t)
        if self._conn is not None:
            await asyncio.get_running_loop().run_in_executor(self._writer, self._conn.close)
        self._writer.shutdown(wait=True)

    # --- scheduling ---------------------------------------------------------------------

    async def _watch(self) -> None:
        """Wake the loop whenever the store applied something new."""
        await self.projector.wait_caught_up()
        while True:
            seen = self.projector.position
            if await self.projector.wait_past(seen, timeout=5.0):
                self._wake.set()

    async def _run(self) -> None:
        await self.projector.wait_caught_up()
        log.info("dispatcher started", extra={"position": self.projector.position})
        while True:
            self._wake.clear()
            try:
                idle = await self._dispatch_due()
            except Exception:
                log.exception("dispatch pass failed; retrying")
                idle = 1.0
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(idle):
                    await self._wake.wait()

    async def _dispatch_due(self) -> float:
        """Start a try for every due delivery there is room for; seconds until the next."""
        now = time.time()
        began = time.monotonic()
        if began - self._pruned > 1.0:  # a read takes milliseconds; ten seconds is plenty
            self._ended = {k: t for k, t in self._ended.items() if t > began - 10}
            self._pruned = began
        room = max(0, self.max_in_flight - len(self._in_flight))
        full = frozenset(c for c, n in self._per_channel.items() if n >= self.per_channel)
        limit = room + len(self._in_flight) if room else 0
        due, nxt = await self.projector.read(lambda c: store.schedule(c, now, limit, full))
        for d in due:
            cid = d.channel.id
            if d.notification_id in self._in_flight:
                continue
            if self._ended.get(d.notification_id, 0.0) >= began:
                continue  # this read may be older than that try's record; read again
            if self._per_channel.get(cid, 0) >= self.per_channel or room <= 0:
                continue
            room -= 1
            self._in_flight[d.notification_id] = cid
            self._per_channel[cid] = self._per_channel.get(cid, 0) + 1
            task = asyncio.create_task(self._try(d))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if nxt is None:
            return 5.0
        return min(5.0, max(0.0, nxt - time.time()))

    # --- one try ------------------------------------------------------------------------

    async def _try(self, d: store.Due) -> None:
        ch = d.channel
        ctx = {
            "tenant": ch.tenant,
            "channel_id": ch.id,
            "kind": ch.kind,
            "notification_id": d.notification_id,
            "request_id": d.request_id,
            "event_id": d.source_event_id,
        }
        attempt = d.attempts + 1
        holds_slot = True
        try:
            if time.time() - d.source_time > self.max_age:
                log.info("too old to announce; skipped", extra=ctx)
                await self._write(store.record_closed, d.notification_id, "stale", d.attempts)
                return
            outcome = await self._send(d)
            # the channel may take its next notification while this one's outcome is recorded
            self._release(ch.id)
            holds_slot = False
            if isinstance(outcome, Delivered):
                await self._record_sent(d, attempt)
                log.info("notification sent", extra={**ctx, "attempt": attempt})
                return
            delay = None if outcome.permanent else self.policy.delay(attempt)
            if delay is None:
                await self._record_failed(d, attempt, outcome.error)
                log.warning(
                    "notification failed for good",
                    extra={**ctx, "attempts": attempt, "error": outcome.error},
                )
                return
            await self._write(
                store.record_try, d.notification_id, attempt, time.time() + delay, outcome.error
            )
            log.info(
                "try failed; will retry",
                extra={
                    **ctx,
                    "attempt": attempt,
                    "retry_in": round(delay, 3),
                    "error": outcome.error,
                },
            )
        except Exception:
            log.exception("recording a try failed; it will be tried again", extra=ctx)
            with contextlib.suppress(Exception):
                delay = self.policy.delay(attempt) or self.policy.cap
                await self._write(
                    store.record_try, d.notification_id, d.attempts, time.time() + delay, "error"
                )
        finally:
            self._ended[d.notification_id] = time.monotonic()
            self._in_flight.pop(d.notification_id, None)
            if holds_slot:
                self._release(ch.id)
            self._wake.set()

    def _release(self, channel_id: str) -> None:
        n = self._per_channel.get(channel_id, 1) - 1
        if n > 0:
            self._per_channel[channel_id] = n
        else:
            self._per_channel.pop(channel_id, None)
        self._wake.set()

    async def _send(self, d: store.Due) -> Outcome:
        try:
            secret = self._secret(d.channel)
        except SecretBoxError as exc:
            return NotDelivered(f"channel secret does not open: {exc}", permanent=True)
        return await self.senders[d.channel.kind].send(
            d.channel.target, secret, d.notification_id, d.payload
        )

    def _secret(self, ch: store.Channel) -> str | None:
        if ch.id not in self._secrets:
            sealed = ch.secret_ciphertext
            self._secrets[ch.id] = (
                None if sealed is None else self.box.open_text(sealed, channel_context(ch.id))
            )
        return self._secrets[ch.id]

    async def _record_sent(self, d: store.Due, attempt: int) -> None:
        event = NotificationSent(
            notification_id=d.notification_id,
            channel_id=d.channel.id,
            source_event_id=d.source_event_id,
            attempt=attempt,
        )
        await self._close(d, event, "sent", attempt)

    async def _record_failed(self, d: store.Due, attempt: int, error: str) -> None:
        event = NotificationFailed(
            notification_id=d.notification_id,
            channel_id=d.channel.id,
            source_event_id=d.source_event_id,
            attempts=attempt,
            error=error,
        )
        await dead_letter(
            self.js,
            SERVICE,
            payload=d.payload,
            subject=f"notification.{d.channel.kind}.{d.channel.id}",
            reason="delivery_failed",
            detail=f"{error} after {attempt} tries (notification {d.notification_id})",
            msg_id=derived_event_id(d.notification_id, "DeadLetter"),
        )
        await self._close(d, event, "failed", attempt)

    async def _close(
        self, d: store.Due, event: NotificationSent | NotificationFailed, status: str, attempt: int
    ) -> None:
        """Record the outcome as an event; the store closes the row when it applies it (one
        writer, no lock contention on the hot path). Until then the try counts as in flight."""
        try:
            [appended] = await self.publisher.append(
                d.channel.tenant,
                [event],
                0,
                ids=[derived_event_id(d.notification_id, event.NAME)],
            )
        except ConcurrencyConflict:
            appended = None  # recorded already, by a run that crashed before the store saw it
        if appended is None or not await self.projector.wait_for(appended.seq, timeout=5.0):
            await self._write(store.record_closed, d.notification_id, status, attempt)

    async def _write(self, fn: Callable[..., None], *args: object) -> None:
        conn = self._conn
        assert conn is not None
        await asyncio.get_running_loop().run_in_executor(self._writer, fn, conn, *args)


def channel_context(channel_id: str) -> str:
    """What a channel's sealed secret is bound to: it opens for this channel only."""
    return f"notify-svc:channel:{channel_id}"
