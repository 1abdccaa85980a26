"""An aggregate's true state, read from EPM_EVENTS itself rather than from the projection.

Used when an append meets a concurrency conflict (the projection may just be
behind) and when a request is not in the projection yet. The events of one
aggregate are few, so they are fetched one by one with "next message matching
this subject" gets from the stream leader (never a direct get, which a lagging
replica may answer).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from epm_domain.request import REQUEST_EVENTS, Request, evolve
from epm_events.catalog import Event
from epm_events.codec import decode, event_of
from epm_events.envelope import Envelope
from epm_events.ids import validate_token
from epm_events.streams import EVENTS
from epm_events.subjects import EVENTS_PREFIX, aggregate_filter
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError


@dataclass(frozen=True, slots=True)
class Recorded:
    seq: int
    env: Envelope
    event: Event
    at: datetime


async def read_events(js: JetStreamContext, filter_subject: str) -> list[Recorded]:
    """Every event on ``filter_subject`` (wildcards allowed), in stream order."""
    out: list[Recorded] = []
    seq = 1
    while True:
        try:
            raw = await js.get_msg(EVENTS.name, seq=seq, subject=filter_subject, next=True)
        except NotFoundError:
            return out
        assert raw.seq is not None  # a stored message always has its sequence
        env = decode(raw.data or b"")
        at = raw.time or env.time
        out.append(
            Recorded(raw.seq, env, event_of(env), at if at.tzinfo else at.replace(tzinfo=UTC))
        )
        seq = raw.seq + 1


async def load_request(
    js: JetStreamContext, request_id: str, tenant: str | None = None
) -> tuple[Request | None, int]:
    """The request as the stream knows it and its last sequence (0: no such request).

    Without ``tenant`` (a request not projected yet) all tenants are searched.
    """
    if tenant is None:
        filt = f"{EVENTS_PREFIX}.*.request.{validate_token(request_id, 'request id')}.*"
    else:
        filt = aggregate_filter(tenant, "request", request_id)
    state: Request | None = None
    last = 0
    for r in await read_events(js, filt):
        last = r.seq
        if not isinstance(r.event, REQUEST_EVENTS):
            continue
        if state is None and r.env.event_name != "RequestCreated":
            continue  # a stray decision without its request: nothing to evolve from
        state = evolve(state, r.event, r.env.tenant, r.at)
    return state, last
