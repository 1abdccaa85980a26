"""``GET /v1/events``: domain events from EPM_EVENTS as Server-Sent Events.

Each connection gets its own ordered consumer, filtered to what the principal
may read, starting strictly after the position asked for (``after``, or the
``Last-Event-ID`` a reconnecting EventSource sends, which wins). ``id:`` is
the stream sequence, ``data:`` the CloudEvent exactly as stored. The consumer
is read without a callback, so a slow client leaves flow control unanswered
and the server stops sending instead of the gateway buffering without end.
It is removed when the client goes away.

A stream lasts only as long as its credentials: before each batch of events, and
every ``REVALIDATE_SECONDS`` while idle, it runs the check every request gets
(``epm_gateway.api.still_authenticated``); a revoked token or an ended session
ends the stream, so nothing more reaches the client. Shutdown ends every open
stream (``end_event_streams``), so the server stops without waiting for clients.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Annotated

import anyio
from epm_events.ids import validate_tenant
from epm_events.streams import EVENTS
from epm_events.subjects import ALL_EVENTS, EVENTS_PREFIX, tenant_events_filter
from epm_service.errors import Forbidden, Invalid, NotFound
from epm_service.principal import Principal
from fastapi import APIRouter, FastAPI, Header, Query, Request
from fastapi.responses import StreamingResponse
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from epm_gateway.api import Caller, Service, still_authenticated
from epm_gateway.domain import PERMISSIONS

log = logging.getLogger(__name__)

router = APIRouter(tags=["events"])

HEARTBEAT_SECONDS = 15.0
"""A ``: ping`` comment after this long without an event keeps proxies from closing."""
RETRY_MS = 3000
"""How long a browser's EventSource waits before it reconnects."""
REVALIDATE_SECONDS = 5.0
"""An idle stream checks its credentials this often (a busy one before each batch)."""
BATCH = 256
"""Events already received that are sent after one credentials check."""
REQUEST_AGGREGATE = "request"

Alive = Callable[[], Awaitable[bool]]
"""Whether the stream's credentials still hold (checked as it goes)."""


@dataclass(eq=False)
class _Watch:
    """One open stream, as shutdown sees it."""

    ended: bool = False
    waiting: anyio.CancelScope | None = None  # while it waits for the next event

    def end(self) -> None:
        self.ended = True
        if self.waiting is not None:
            self.waiting.cancel()


@dataclass
class OpenStreams:
    """The event streams an app serves, so that shutdown can end them."""

    closing: bool = False
    watches: set[_Watch] = field(default_factory=set)

    def open(self) -> _Watch:
        watch = _Watch(ended=self.closing)
        self.watches.add(watch)
        return watch

    def close(self, watch: _Watch) -> None:
        self.watches.discard(watch)

    def end_all(self) -> int:
        self.closing = True
        for watch in list(self.watches):
            watch.end()
        return len(self.watches)


def open_streams(app: FastAPI) -> OpenStreams:
    found: OpenStreams | None = getattr(app.state, "event_streams", None)
    if found is None:
        found = app.state.event_streams = OpenStreams()
    return found


def end_event_streams(app: FastAPI) -> int:
    """End every open event stream (and refuse to keep new ones open): on shutdown, so
    the HTTP server need not wait for SSE clients, which would never go by themselves.
    Their EventSource reconnects, to another replica or to this one restarted. Returns
    how many were open."""
    return open_streams(app).end_all()


def events_filter(who: Principal, tenant: str | None) -> str:
    """The subject filter of what ``who`` may read of ``tenant`` (None: every tenant it sees).

    Principals with ``events.read`` (admins, MSP technicians, integrators) read every
    domain event of their scope; technicians read the request events the console lives on.
    """
    if tenant is not None:
        validate_tenant(tenant)
        if not who.sees_tenant(tenant):
            raise NotFound(f"there is no tenant {tenant!r} among yours")
    permissions = PERMISSIONS[who.role]
    everything = "events.read" in permissions
    if not everything and "requests.read" not in permissions:
        raise Forbidden("your role may not read the event stream")
    scope = tenant if tenant is not None else who.tenant
    if everything:
        return ALL_EVENTS if scope is None else tenant_events_filter(scope)
    return f"{EVENTS_PREFIX}.{'*' if scope is None else scope}.{REQUEST_AGGREGATE}.>"


def start_after(after: int | None, last_event_id: str | None) -> int | None:
    """The position to resume from: Last-Event-ID (a reconnect) wins over ``after``."""
    if last_event_id is not None and last_event_id.strip():
        try:
            position = int(last_event_id.strip())
        except ValueError:
            raise Invalid(
                "Last-Event-ID must be a stream sequence (the id: of an event received)"
            ) from None
        if position < 0:
            raise Invalid("Last-Event-ID must be 0 or more")
        return position
    return after


def sse_event(seq: int, data: bytes) -> bytes:
    lines = data.splitlines() or [b""]
    return b"id: %d\n" % seq + b"".join(b"data: " + line + b"\n" for line in lines) + b"\n"


async def event_frames(
    js: JetStreamContext,
    subject: str,
    after: int | None,
    follow: bool,
    alive: Alive,
    streams: OpenStreams,
) -> AsyncIterator[bytes]:
    """SSE frames: events strictly after ``after`` (None: only new ones), then live, for
    as long as ``alive()`` says the credentials hold and the server is not stopping."""
    if after is None:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.NEW)
    else:
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after + 1
        )
    sub = await js.subscribe(subject, stream=EVENTS.name, ordered_consumer=True, config=config)

    async def next_batch(watch: _Watch, timeout: float) -> list[Msg]:
        """The next event (waiting up to ``timeout``) and those already here behind it."""
        batch: list[Msg] = []
        with anyio.CancelScope() as waiting:  # shutdown cancels the wait, never a send
            watch.waiting = waiting
            with contextlib.suppress(NatsTimeout):
                batch.append(await sub.next_msg(timeout=max(timeout, 0.001)))
        watch.waiting = None
        while batch and len(batch) < BATCH and sub.pending_msgs:
            batch.append(await sub.next_msg())
        return batch

    async def frames() -> AsyncIterator[bytes]:
        watch = streams.open()
        try:
            yield b"retry: %d\n: connected\n\n" % RETRY_MS
            if not follow:
                info = await sub.consumer_info()  # nothing pending and nothing on its way?
                delivered = info.delivered.consumer_seq if info.delivered else 0
                if not info.num_pending and not delivered:
                    return
            checked = sent = anyio.current_time()  # authenticated just now
            while not watch.ended:
                now = anyio.current_time()
                wait = min(sent + HEARTBEAT_SECONDS, checked + REVALIDATE_SECONDS) - now
                batch = await next_batch(watch, wait)
                if watch.ended:
                    break
                now = anyio.current_time()
                if batch or now - checked >= REVALIDATE_SECONDS:
                    if not await alive():
                        yield b": ended: the token was revoked or the session ended\n\n"
                        return
                    checked = anyio.current_time()
                for msg in batch:
                    meta = msg.metadata
                    yield sse_event(meta.sequence.stream, msg.data)
                    if not follow and not meta.num_pending:
                        return
                if batch:
                    sent = anyio.current_time()
                elif now - sent >= HEARTBEAT_SECONDS:
                    yield b": ping\n\n"
                    sent = now
            yield b": ended: the server is stopping\n\n"
        finally:
            streams.close(watch)
            # Starlette cancels the response when the client goes: shield the clean-up.
            with anyio.CancelScope(shield=True):
                await close(js, sub)

    return frames()


async def close(js: JetStreamContext, sub: JetStreamContext.PushSubscription) -> None:
    """Unsubscribe and delete the consumer now, rather than when the server notices."""
    with contextlib.suppress(Exception):  # the connection may be gone already
        name = (await sub.consumer_info()).name
        await sub.unsubscribe()
        await js.delete_consumer(EVENTS.name, name)


@router.get(
    "/v1/events",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "an SSE stream"},
        404: {"description": "a tenant that is not yours"},
    },
)
async def events(
    request: Request,
    who: Caller,
    svc: Service,
    tenant: Annotated[
        str | None, Query(description="one tenant ('_global': MSP-wide aggregates)")
    ] = None,
    after: Annotated[
        int | None,
        Query(
            ge=0,
            description="strictly after this stream sequence (0: from the start);"
            " leave out for new events only",
        ),
    ] = None,
    follow: Annotated[
        bool, Query(description="false: end once caught up instead of staying live")
    ] = True,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    """Domain events (CloudEvents) as Server-Sent Events: ``id:`` is the stream sequence.

    Tenant principals read their tenant only (technicians: its request events);
    MSP principals and all-tenant integrators every tenant, or one with ``tenant``.
    A reconnecting EventSource resumes after its ``Last-Event-ID``. ``: ping``
    comments keep idle connections open. The stream ends (within seconds) once the
    token is revoked or the console session ends, and when the server stops.
    """
    subject = events_filter(who, tenant)
    position = start_after(after, last_event_id)
    frames = await event_frames(
        svc.ctx.bus.js,
        subject,
        position,
        follow,
        alive=partial(still_authenticated, request, who),
        streams=open_streams(request.app),
    )
    log.info(
        "event stream opened",
        extra={"token_id": who.token_id, "subject": subject, "after": position},
    )
    return StreamingResponse(
        frames,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
