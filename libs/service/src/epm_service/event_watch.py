"""Events of a few types as EPM_EVENTS stores them, from now on, handed to a callback as
they arrive: for a waiter that only needs to learn that an event exists (request-svc's
answer to an online agent hears approval-svc's decision this way).

An ordered consumer filtered to those types, starting at the stream's end: only what is
stored (an append JetStream refused, the loser of a first-decision-wins race, never
comes), nothing written anywhere. A projection in the same process learns the same from
``Projector.observe``; this is for a service whose projection runs elsewhere
(epm_service.projection_process).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

from epm_events.streams import EVENTS
from epm_events.subjects import ALL_EVENTS, event_type_filter
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from epm_service.natsfast import AckReply, ordered_callback
from epm_service.projection import StoredMsg

log = logging.getLogger(__name__)


class EventWatch:
    def __init__(
        self, js: JetStreamContext, names: Iterable[str], fn: Callable[[StoredMsg], None]
    ) -> None:
        self.js = js
        self.names = sorted(set(names))
        self.fn = fn
        self._sub: Any = None
        self._last_seq = 0

    async def start(self) -> None:
        self._sub = await self.js.subscribe(
            ALL_EVENTS,
            stream=EVENTS.name,
            cb=ordered_callback(self._receive),
            ordered_consumer=True,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.NEW,
                filter_subjects=[event_type_filter(name) for name in self.names],
            ),
            pending_msgs_limit=-1,
            pending_bytes_limit=-1,
        )

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):  # the connection may be closed already
                await self._sub.unsubscribe()
            self._sub = None

    def _receive(self, subject: str, ack: AckReply, data: bytes, msg_id: str | None) -> None:
        seq, _, ts_ns, _ = ack
        if seq <= self._last_seq:
            return  # an ordered consumer reset delivers from the last one seen
        self._last_seq = seq
        try:
            self.fn(StoredMsg(seq, subject, data, msg_id, ts_ns))
        except Exception:
            log.exception("a watcher of events failed", extra={"seq": seq, "subject": subject})
