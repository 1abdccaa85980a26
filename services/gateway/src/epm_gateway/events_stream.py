"""``GET /v1/events``: domain events from EPM_EVENTS as Server-Sent Events.

Each connection gets its own ordered consumer, filtered to what the principal
may read, starting strictly after the position asked for (``after``, or the
``Last-Event-ID`` a reconnecting EventSource sends, which wins). ``id:`` is
the stream sequence, ``data:`` the CloudEvent exactly as stored. The consumer
is read without a callback, so a slow client leaves flow control unanswered
and the server stops sending instead of the gateway buffering without end.
It is removed when the client goes away.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Annotated

import anyio
from epm_events.ids import validate_tenant
from epm_events.streams import EVENTS
from epm_events.subjects import ALL_EVENTS, EVENTS_PREFIX, tenant_events_filter
from epm_service.errors import Forbidden, Invalid, NotFound
from epm_service.principal import Principal
from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from epm_gateway.api import Caller, Service
from epm_gateway.domain import PERMISSIONS

log = logging.getLogger(__name__)

router = APIRouter(tags=["events"])

HEARTBEAT_SECONDS = 15.0
"""A ``: ping`` comment after this long without an event keeps proxies from closing."""
RETRY_MS = 3000
"""How long a browser's EventSource waits before it reconnects."""
REQUEST_AGGREGATE = "request"


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
    js: JetStreamContext, subject: str, after: int | None, follow: bool
) -> AsyncIterator[bytes]:
    """SSE frames: events strictly after ``after`` (None: only new ones), then live."""
    if after is None:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.NEW)
    else:
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after + 1
        )
    sub = await js.subscribe(subject, stream=EVENTS.name, ordered_consumer=True, config=config)

    async def frames() -> AsyncIterator[bytes]:
        try:
            yield b"retry: %d\n: connected\n\n" % RETRY_MS
            if not follow:
                info = await sub.consumer_info()  # nothing pending and nothing on its way?
                delivered = info.delivered.consumer_seq if info.delivered else 0
                if not info.num_pending and not delivered:
                    return
            while True:
                try:
                    msg = await sub.next_msg(timeout=HEARTBEAT_SECONDS)
                except NatsTimeout:
                    yield b": ping\n\n"
                    continue
                meta = msg.metadata
                yield sse_event(meta.sequence.stream, msg.data)
                if not follow and not meta.num_pending:
                    return
        finally:
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
    comments keep idle connections open.
    """
    subject = events_filter(who, tenant)
    position = start_after(after, last_event_id)
    frames = await event_frames(svc.ctx.bus.js, subject, position, follow)
    log.info(
        "event stream opened",
        extra={"token_id": who.token_id, "subject": subject, "after": position},
    )
    return StreamingResponse(
        frames,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
