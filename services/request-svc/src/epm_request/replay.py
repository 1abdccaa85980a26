"""Offline log replay: a verified OfflineLogBatch becomes domain events on the device
aggregate, exactly once per (device, sequence), however often and however late it comes.

How "exactly once" holds (docs/internal-contracts.md, "Offline log replay"):
- every record's event id is ``offline_record_event_id(device, seq, type)``: the same
  record always has the same ``Nats-Msg-Id``;
- the projection says which sequences of the device are accepted; ``decide`` keeps the
  new ones;
- the append is the arbiter: the FIRST new record is appended with
  ``Nats-Expected-Last-Subject-Sequence`` = the device aggregate's last sequence as the
  projection knows it. If the stream has anything newer for the device (the projection
  was behind, another replica or a redelivery got there first), the append fails (or
  comes back a duplicate); the replay then waits until its projection has everything the
  stream holds and decides again. Once it succeeds, the projection was complete for this
  device, so none of the new records exists yet;
- the rest follow at once, pipelined (``BulkPublisher``: no round trip each, their
  acknowledgements awaited together): a copy published concurrently by another replica
  carries the same ids and lands within JetStream's duplicate window (seconds apart, the
  window is minutes), so one of the two is dropped.
Alerts are raised before the records are appended, each once (expected sequence 0 on its
own alert aggregate), so a crash in between raises nothing twice and loses nothing.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import orjson
from epm_events.agent import REPLAY_KIND, OfflineLogBatch, ReplayAck
from epm_events.catalog import OfflineRecord, SecurityAlertRaised
from epm_events.envelope import service_source
from epm_events.ids import derived_event_id, offline_record_event_id
from epm_events.streams import DEVICE, EVENTS
from epm_events.subjects import aggregate_filter, device_subject, event_subject
from epm_service.projection import Projector
from epm_service.publisher import (
    EXPECTED_STREAM,
    MSG_ID,
    PUBLISH_ACK_TIMEOUT,
    BulkPublisher,
    ConcurrencyConflict,
    append_encoded,
)
from epm_service.runtime import ServiceContext

from epm_request import store
from epm_request.offline_replay import Alert, DeviceLog, decide, redeemed_refs

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
CATCH_UP_TIMEOUT = 30.0


class EarlierUploadPending(Exception):
    """The batch would leave a gap that an earlier upload of the device, still
    unacknowledged in EPM_AGENT, may fill: handle this batch after that one (nothing was
    raised or appended)."""


@dataclass(frozen=True, slots=True)
class ReplayOutcome:
    ack: ReplayAck
    alerts: list[Alert]


class Prepared(NamedTuple):
    """One attempt's verdict, reduced to what outlives the wait for the stream: the accepted
    records as they are appended (subject, CloudEvent bytes, event id), the device
    aggregate's last sequence they were decided against, and the counts. A storm holds a
    thousand batches in that wait at once; pydantic records and their dicts there cost
    memory and the collector's time (it walked them on every pass)."""

    records: list[tuple[str, bytes, str]]
    agg_seq: int
    duplicates: int
    refused: int
    alerts: list[Alert]


class OfflineReplay:
    def __init__(self, ctx: ServiceContext, projector: Projector) -> None:
        self.ctx = ctx
        self.js = ctx.bus.js
        self.store = projector
        self.source = service_source(ctx.name)
        self._appended: dict[str, int] = {}  # device -> stream seq of our last record for it
        self.bulk = BulkPublisher(ctx.bus.nc)

    async def replay(
        self,
        tenant: str,
        device: str,
        batch_id: str,
        batch: OfflineLogBatch,
        received: datetime,
        earlier_pending: Callable[[], Awaitable[bool]] | None = None,
    ) -> ReplayOutcome:
        """Decide, raise the alerts, append the new records, tell the device. Raises on a
        transient failure (the caller retries the whole batch: everything here is idempotent).

        ``earlier_pending``: asked before a gap is reported; True (an earlier upload of the
        device is still unacknowledged: a replica died holding it, or it was put back)
        raises EarlierUploadPending instead, so a gap is only a gap once nothing earlier
        can fill it."""
        mine = self._appended.get(device)
        if mine is not None:  # read our own writes: the device's previous batch
            await self.store.wait_for(mine, timeout=CATCH_UP_TIMEOUT)
        refs, code_hashes = redeemed_refs(device, batch)
        if refs:
            # The reuse checks read the store as committed: a code redeemed or issued a
            # moment ago (another device's upload, acknowledged already) may still be on
            # its way or gathering there. Rare in a storm, where records are elevations.
            await self._catch_up()
        for attempt in range(1, MAX_ATTEMPTS + 1):
            prepared = self._prepare(tenant, device, batch, refs, code_hashes, received)
            if (
                earlier_pending is not None
                and any(a.kind == "log_gap" for a in prepared.alerts)
                and await earlier_pending()
            ):
                raise EarlierUploadPending(
                    f"batch {batch_id} of device {device} starts after records an earlier, "
                    "unacknowledged upload may hold"
                )
            for alert in prepared.alerts:
                await self._raise(tenant, device, batch_id, alert)
            try:
                await self._append(tenant, device, prepared.records, prepared.agg_seq)
                break
            except ConcurrencyConflict:
                log.info(
                    "replay met newer events of the device; catching up",
                    extra={"tenant": tenant, "device_id": device, "attempt": attempt},
                )
                await self._catch_up()
        else:
            raise RuntimeError(
                f"replay of {batch_id} from device {device} kept meeting concurrent appends"
            )
        ack = ReplayAck(
            tenant=tenant,
            device_id=device,
            batch_id=batch_id,
            first_seq=batch.first_seq,
            processed_through=batch.last_seq,
            accepted=len(prepared.records),
            duplicates=prepared.duplicates,
            refused=prepared.refused,
        )
        await self.bulk.publish(
            [
                (
                    device_subject(tenant, device, REPLAY_KIND),
                    orjson.dumps(ack.model_dump(mode="json")),
                    {
                        MSG_ID: derived_event_id(batch_id, "ReplayAck"),
                        EXPECTED_STREAM: DEVICE.name,
                    },
                )
            ],
            PUBLISH_ACK_TIMEOUT,
        )
        log.info(
            "offline log replayed",
            extra={
                "tenant": tenant,
                "device_id": device,
                "first_seq": batch.first_seq,
                "last_seq": batch.last_seq,
                "accepted": ack.accepted,
                "duplicates": ack.duplicates,
                "refused": ack.refused,
                "alerts": len(prepared.alerts),
            },
        )
        return ReplayOutcome(ack, prepared.alerts)

    def _prepare(
        self,
        tenant: str,
        device: str,
        batch: OfflineLogBatch,
        refs: list[str],
        code_hashes: list[str],
        received: datetime,
    ) -> Prepared:
        """Decide against what the store holds now, and encode what is accepted."""
        # Indexed lookups bounded by the batch size (at most 200 records): on the loop
        # (read_now). Through the reader threads, each read waits for the GIL behind a
        # loop that a storm keeps busy (milliseconds a hop), and the batches queue there.
        last, agg_seq, hashes = self.store.read_now(
            lambda c: store.device_log_state(c, device, batch.first_seq, batch.last_seq)
        )
        redemptions = self.store.read_now(lambda c: store.code_redemptions(c, refs))
        issued = self.store.read_now(lambda c: store.issued_to(c, code_hashes))
        verdict = decide(device, batch, DeviceLog(last, hashes), redemptions, issued)
        subject_of = {
            name: event_subject(tenant, "device", device, name)
            for name in {r.NAME for r in verdict.accepted}
        }
        received_at = received.isoformat()
        records = []
        for record, data in zip(verdict.accepted, verdict.uploaded, strict=True):
            payload, event_id = self._encode(tenant, device, record, data, received_at)
            records.append((subject_of[record.NAME], payload, event_id))
        return Prepared(records, agg_seq, verdict.duplicates, verdict.refused, verdict.alerts)

    async def _append(
        self, tenant: str, device: str, records: list[tuple[str, bytes, str]], agg_seq: int
    ) -> None:
        if not records:
            return
        (subject, payload, event_id), rest = records[0], records[1:]
        aggregate = aggregate_filter(tenant, "device", device)
        ack = await append_encoded(
            self.bulk, subject, payload, event_id, aggregate, agg_seq, PUBLISH_ACK_TIMEOUT
        )
        if ack.duplicate:  # published already, after what our projection knows
            raise ConcurrencyConflict(aggregate, agg_seq)
        # One set, one wait (BulkPublisher: no future, callback and semaphore slot per
        # record). Bounded: nats-py never fails a publish lost with its server (killed,
        # say); without a bound this batch, and every later message of the device (handled
        # in order), would wait forever. A timeout is a transient failure: the batch is
        # redelivered, and the records already in are duplicates.
        stored = await self.bulk.publish(
            [(s, p, {MSG_ID: i}) for s, p, i in rest], PUBLISH_ACK_TIMEOUT
        )
        self._appended[device] = max([ack.seq, *(s.seq for s in stored)])

    def _encode(
        self,
        tenant: str,
        device: str,
        record: OfflineRecord,
        data: dict[str, Any],
        received: str,
    ) -> tuple[bytes, str]:
        """The CloudEvent of a record: ``time`` is when the server received the upload (the
        EPM_AGENT timestamp, ISO 8601, the same on every retry), ``data.device_time`` when it happened.
        ``data`` is the record as the device signed it (validated by ``decide``) plus its
        hash, serialised once with orjson: this runs once per record of a replay storm.

        The payload is copied into a bytes object of its own size: orjson (3.12+) returns
        its working buffer, about 8 KiB for a record's 0.7 KiB, and a storm holds every
        record of every batch in flight until the stream acknowledges it (a full storm:
        1.1 GB of request-svc's memory, most of it these buffers)."""
        msg_id = offline_record_event_id(device, record.device_seq, record.NAME)
        envelope = {
            "specversion": "1.0",
            "id": msg_id,
            "source": self.source,
            "type": record.type_name(),
            "subject": device,
            "time": received,
            "datacontenttype": "application/json",
            "tenant": tenant,
            "data": data,
        }
        return bytes(memoryview(orjson.dumps(envelope))), msg_id

    async def _raise(self, tenant: str, device: str, batch_id: str, alert: Alert) -> None:
        event_id = derived_event_id(alert.key, "SecurityAlertRaised")
        event = SecurityAlertRaised(
            alert_id="alert-" + event_id[:18],
            kind=alert.kind,
            device_id=device,
            reason=alert.reason,
            evidence={**alert.evidence, "batch_id": batch_id},
        )
        log.warning(
            "offline log alert: %s",
            alert.reason,
            extra={"tenant": tenant, "device_id": device, "kind": alert.kind},
        )
        # A conflict: raised already, for this very record (a re-sent or redelivered batch).
        with contextlib.suppress(ConcurrencyConflict):
            await self.ctx.publisher.append(tenant, [event], 0, ids=[event_id])

    async def _catch_up(self) -> None:
        """Until the projection holds everything the stream held a moment ago."""
        info = await self.js.stream_info(EVENTS.name)
        started = time.monotonic()
        if not await self.store.wait_for(info.state.last_seq, timeout=CATCH_UP_TIMEOUT):
            raise RuntimeError(
                f"request-svc's projection did not reach stream sequence {info.state.last_seq} "
                f"within {CATCH_UP_TIMEOUT:g}s; the batch will be retried"
            )
        log.debug("caught up", extra={"ms": round((time.monotonic() - started) * 1000, 1)})
