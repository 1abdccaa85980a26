"""The answer an online agent gets on its round trip (epm_request.intake).

request-svc appends RequestCreated and waits; approval-svc reacts to every new
RequestCreated (epm_approval.decisions.Decisions.on_request_created) and either decides it
at once, a one-time grant or a rule appending Approved/Denied on the request's subject, or
says on ``UNDECIDED_NOTICE`` that nothing decides it and it waits for a technician.
request-svc learns of the decision the moment EPM_EVENTS stores it, from a consumer of
the decisions alone (``epm_service.event_watch.EventWatch``; its store is written in a
process of its own), so no command crosses between the two services on the way: four
message transfers fewer per request than a call and its reply, on a machine where each one
wakes a process (bench/README.md, "Online request").

Nothing here is the truth: a waiter that hears nothing for ``DECISION_WAIT_SECONDS``
(approval-svc down or far behind) answers from the store, ``open`` for a request nobody
decided yet; a later decision still reaches the device on EPM_DEVICE, as every decision
does. It does not wait at all once approval-svc has been silent on ``DECIDING_NOTICE``
(every replica says it reacts, every second) three times as long, counting from this
replica's start: no replica is there to decide.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from epm_domain.request import answer_of_event
from epm_events.agent import RequestAnswer
from epm_events.catalog import Approved, Denied, RequestExpired
from epm_events.codec import DecodeError
from epm_events.notices import Undecided
from epm_events.subjects import (
    DECIDING_EVERY_SECONDS,
    DECIDING_NOTICE,
    UNDECIDED_NOTICE,
    parse_event_subject,
)
from epm_service.bus import Bus
from epm_service.event_watch import EventWatch
from epm_service.projection import StoredMsg, decode_received
from nats.aio.msg import Msg
from pydantic import ValidationError

log = logging.getLogger(__name__)

DECISION_WAIT_SECONDS = 2.0
"""How long an agent's answer waits for approval-svc's verdict on a new request before it
says what the store knows (the agent itself gives up after 3 s, epm_agent.agent's
ANSWER_TIMEOUT, and then reports ``open``)."""

ENDINGS = (Approved.NAME, Denied.NAME, RequestExpired.NAME)


SILENT_AFTER_SECONDS = 3 * DECIDING_EVERY_SECONDS
"""approval-svc is taken to be gone when no replica said it reacts for this long."""


def _give_up(waiting: asyncio.Future[RequestAnswer | None]) -> None:
    """No verdict in time: the waiter answers from the store (None)."""
    if not waiting.done():
        waiting.set_result(None)


class PendingAnswers:
    """Requests whose agent waits for an answer, each with the future that gets it."""

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[RequestAnswer | None]] = {}
        self._subs: list[Any] = []
        self._watch: EventWatch | None = None
        self._deciding_heard: float | None = None  # monotonic; None: not started

    async def start(self, bus: Bus) -> None:
        nc = bus.nc
        self._watch = EventWatch(bus.js, ENDINGS, self.on_request_ended)
        await self._watch.start()
        self._deciding_heard = time.monotonic()  # as if heard now: silent from here on
        # Not queue groups: the replica whose agent waits is the one that must hear them.
        self._subs = [
            await nc.subscribe(UNDECIDED_NOTICE, cb=self.on_undecided),
            await nc.subscribe(DECIDING_NOTICE, cb=self.on_deciding),
        ]

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        self._subs = []
        if self._watch is not None:
            await self._watch.stop()
            self._watch = None

    @property
    def nobody_decides(self) -> bool:
        """No approval-svc replica said it reacts to new requests for ``SILENT_AFTER_SECONDS``
        (stopped, crashed, cut off from NATS, or not started), counting from this
        replica's start: a replica says so every second, and one that starts later decides
        no request created before its reactions began, so waiting for it gains nothing."""
        heard = self._deciding_heard
        return heard is not None and time.monotonic() - heard > SILENT_AFTER_SECONDS

    async def on_deciding(self, msg: Msg) -> None:
        self._deciding_heard = time.monotonic()

    def expect(self, request_id: str) -> asyncio.Future[RequestAnswer | None]:
        """Before RequestCreated is appended: its decision may be received before the
        append's own acknowledgement."""
        waiting = self._waiting.get(request_id)
        if waiting is None or waiting.done():
            waiting = self._waiting[request_id] = asyncio.get_running_loop().create_future()
        return waiting

    async def wait(self, waiting: asyncio.Future[RequestAnswer | None]) -> RequestAnswer | None:
        """The verdict, or None if none came within ``DECISION_WAIT_SECONDS``, or at once
        (None) when nobody decides (``nobody_decides``)."""
        if waiting.done():
            return waiting.result()
        if self.nobody_decides:
            return None
        # A timer that ends the wait, not ``asyncio.timeout`` (its context manager is a few
        # dozen lines of Python, on request-svc's busiest path).
        expiry = asyncio.get_running_loop().call_later(DECISION_WAIT_SECONDS, _give_up, waiting)
        try:
            return await waiting
        finally:
            expiry.cancel()

    def forget(self, request_id: str) -> None:
        self._waiting.pop(request_id, None)

    def on_request_ended(self, m: StoredMsg) -> None:
        """A decision or an expiry, as EPM_EVENTS stores it."""
        if not self._waiting:
            return
        waiting = self._waiting.get(parse_event_subject(m.subject).aggregate_id)
        if waiting is None or waiting.done():
            return
        try:
            _, event = decode_received(m)
        except DecodeError:
            return  # the store dead-letters it; the waiter answers from the store
        if isinstance(event, Approved | Denied | RequestExpired):
            waiting.set_result(answer_of_event(event))

    async def on_undecided(self, msg: Msg) -> None:
        try:
            request_id = Undecided.model_validate_json(msg.data).request_id
        except ValidationError:
            log.warning("unreadable undecided notice ignored", extra={"size": len(msg.data)})
            return
        waiting = self._waiting.get(request_id)
        if waiting is not None and not waiting.done():
            waiting.set_result(RequestAnswer(request_id=request_id, status="open"))
