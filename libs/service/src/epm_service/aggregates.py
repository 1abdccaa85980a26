"""Read one aggregate's events straight from EPM_EVENTS: the authoritative state.

Projections may lag; when an append meets a ConcurrencyConflict, the owner
re-reads the aggregate here to tell "someone else decided" (409) from "my
projection was behind" (retry).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from epm_events.catalog import Event
from epm_events.codec import decode, event_of
from epm_events.envelope import Envelope
from epm_events.streams import EVENTS
from epm_events.subjects import aggregate_filter
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from epm_service.natsfast import parse_ack_reply


@dataclass(frozen=True, slots=True)
class StoredEvent:
    seq: int
    timestamp_ns: int
    envelope: Envelope
    event: Event


async def read_aggregate(
    js: JetStreamContext, tenant: str, aggregate: str, aggregate_id: str
) -> list[StoredEvent]:
    """All events of one aggregate in stream order (an ephemeral, in-memory consumer)."""
    psub = await js.pull_subscribe(
        aggregate_filter(tenant, aggregate, aggregate_id),
        stream=EVENTS.name,
        config=ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.ALL,
            mem_storage=True,
            inactive_threshold=10,
        ),
    )
    try:
        pending = (await psub.consumer_info()).num_pending or 0
        out: list[StoredEvent] = []
        while len(out) < pending:
            for msg in await psub.fetch(min(pending - len(out), 256), timeout=5):
                seq, _, ts, _ = parse_ack_reply(msg.reply)
                env = decode(msg.data)
                out.append(StoredEvent(seq, ts, env, event_of(env)))
        return out
    finally:
        with contextlib.suppress(Exception):
            await psub.unsubscribe()
