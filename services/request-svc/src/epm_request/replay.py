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

Where: the upload is checked, decided and encoded by ``epm_request.upload_prep`` in a
worker process (``EPM_REPLAY_WORKERS``; docs/decisions.md 26), the rest here, on the event
loop. The expected sequence above makes it safe wherever the deciding ran.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import orjson
from epm_events.agent import REPLAY_KIND, ReplayAck, ReplayRefusal
from epm_events.catalog import AdminSessionStarted, SecurityAlertRaised
from epm_events.envelope import agent_source
from epm_events.ids import derived_event_id
from epm_events.streams import DEVICE, EVENTS
from epm_events.subjects import AgentSubject, aggregate_filter, device_subject
from epm_service.errors import CommandError
from epm_service.natsfast import MSG_ID
from epm_service.principal import SYSTEM
from epm_service.processes import WorkerDied, WorkerProcesses
from epm_service.projection_process import ProjectionProcess
from epm_service.publisher import (
    EXPECTED_STREAM,
    PUBLISH_ACK_TIMEOUT,
    BulkPublisher,
    ConcurrencyConflict,
    append_encoded,
)
from epm_service.rpc import call
from epm_service.runtime import ServiceContext, tune_gc

from epm_request.commands import APPROVALS
from epm_request.offline_replay import Alert
from epm_request.upload_prep import (
    UploadJob,
    UploadPrepared,
    prepare_in_worker,
    prepare_upload,
)

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
CATCH_UP_TIMEOUT = 30.0
ROTATE_TIMEOUT = 5.0
_ADMIN_SESSION = "." + AdminSessionStarted.NAME


class EarlierUploadPending(Exception):
    """The batch would leave a gap that an earlier upload of the device, still
    unacknowledged in EPM_AGENT, may fill: handle this batch after that one (nothing was
    raised or appended)."""


@dataclass(frozen=True, slots=True)
class ReplayOutcome:
    ack: ReplayAck
    alerts: list[Alert]


class OfflineReplay:
    def __init__(self, ctx: ServiceContext, projector: ProjectionProcess) -> None:
        self.ctx = ctx
        self.js = ctx.bus.js
        self.store = projector
        self._appended: dict[str, int] = {}  # device -> stream seq of our last record for it
        self.bulk = BulkPublisher(ctx.bus.nc)
        self.workers = ctx.settings.replay_workers
        self._workers: WorkerProcesses | None = None

    async def start(self) -> None:
        """Start the workers that prepare uploads (``EPM_REPLAY_WORKERS``): spawned now, so
        each has imported what it needs before the first upload of a storm. Their collector
        is tuned as every service's (``tune_gc``): left at Python's defaults, a worker
        preparing a storm's records ran a full collection of every imported module's
        objects about every 500 records."""
        if self.workers > 0 and self._workers is None:
            self._workers = WorkerProcesses(self.workers, "replay-worker", tune_gc)
            await self._workers.start()

    async def stop(self) -> None:
        if self._workers is not None:
            await self._workers.stop()
            self._workers = None

    async def replay(
        self,
        subject: AgentSubject,
        batch_id: str,
        payload: bytes,
        received: datetime,
        earlier_pending: Callable[[], Awaitable[bool]] | None = None,
    ) -> ReplayOutcome:
        """Check and decide the upload (``payload``, the CloudEvent the device signed), raise
        the alerts, append the new records, tell the device. Raises Malformed or Refused
        (epm_request.admission) for an upload that is not one, and on a transient failure
        (the caller retries the whole batch: everything here is idempotent).

        ``earlier_pending``: asked before a gap is reported; True (an earlier upload of the
        device is still unacknowledged: a replica died holding it, or it was put back)
        raises EarlierUploadPending instead, so a gap is only a gap once nothing earlier
        can fill it."""
        tenant, device = subject.tenant, subject.device
        mine = self._appended.get(device)
        if mine is not None:  # read our own writes: the device's previous batch
            await self.store.wait_for(mine, timeout=CATCH_UP_TIMEOUT)
        # The records' CloudEvents as every event has them: ``time`` in UTC with "Z", and
        # the device the records happened on as their ``source`` (DESIGN.md's
        # ``/agents/<tenant>/<device>``: the service only checked and replayed them).
        at = received.astimezone(UTC).isoformat().replace("+00:00", "Z")
        job = UploadJob(subject, batch_id, payload, at, agent_source(tenant, device), False)
        attempt = 0
        while True:
            result = await self._prepare(job)
            result.raise_problem(device)
            if result.prepared is None:
                # The reuse checks read the store as committed: a code redeemed or issued
                # a moment ago (another device's upload, acknowledged already) may still
                # be on its way or gathering there. Rare in a storm, where records are
                # elevations.
                await self._catch_up()
                job = replace(job, codes_checked=True)
                continue
            prepared = result.prepared
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
                attempt += 1
                if attempt >= MAX_ATTEMPTS:
                    raise RuntimeError(
                        f"replay of {batch_id} from device {device} kept meeting concurrent appends"
                    ) from None
                log.info(
                    "replay met newer events of the device; catching up",
                    extra={"tenant": tenant, "device_id": device, "attempt": attempt},
                )
                await self._catch_up()
                job = replace(job, codes_checked=True)
        sessions = [i for subject, _, i in prepared.records if subject.endswith(_ADMIN_SESSION)]
        if sessions:
            await self._rotate_device_key(tenant, device, sessions)
        ack = ReplayAck(
            tenant=tenant,
            device_id=device,
            batch_id=batch_id,
            first_seq=result.first_seq,
            processed_through=result.last_seq,
            accepted=len(prepared.records),
            duplicates=prepared.duplicates,
            refused=prepared.refused,
            refusals=tuple(ReplayRefusal(device_seq=s, kind=k) for s, k in prepared.refusals),
        )
        await self.bulk.publish(
            [
                (
                    device_subject(tenant, device, REPLAY_KIND),
                    # without ``refusals`` when there are none: agents that predate the field
                    # (their models forbid unknown fields) read every other ack as before
                    orjson.dumps(ack.model_dump(mode="json", exclude_defaults=True)),
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
                "first_seq": result.first_seq,
                "last_seq": result.last_seq,
                "accepted": ack.accepted,
                "duplicates": ack.duplicates,
                "refused": ack.refused,
                "alerts": len(prepared.alerts),
            },
        )
        return ReplayOutcome(ack, prepared.alerts)

    async def _prepare(self, job: UploadJob) -> UploadPrepared:
        """In a worker process if there is one (the event loop goes on meanwhile), else
        here. Indexed lookups bounded by the batch size (at most 200 records) on read_now's
        connection: through the reader threads, each read waited for the GIL behind a loop
        that a storm keeps busy (milliseconds a hop), and the batches queued there."""
        if self._workers is not None:
            try:
                return await self._workers.run(prepare_in_worker, str(self.store.path), job)
            except WorkerDied:
                log.warning("the replay worker ended mid-batch; preparing it here instead")
        return self.store.read_now(lambda c: prepare_upload(job, c))

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

    async def _rotate_device_key(self, tenant: str, device: str, sessions: list[str]) -> None:
        """An offline full-admin session was replayed: the device key version is rotated at
        this, the device's next online contact (DESIGN.md; approval-svc's
        ``rotate_device_key``, principal SYSTEM), so the codes of the version the session
        was opened under stop working once the agent reads its KeyUpdate.

        Once per session: only the replay that APPENDED the AdminSessionStarted gets here
        (a re-sent, redelivered or concurrently replayed batch finds it a duplicate). A
        failure here (approval-svc unreachable, request-svc killed in between) is logged;
        approval-svc then rotates the key itself, the session still owed a rotation in its
        offline view (epm_approval.owed_rotations)."""
        try:
            result = await call(
                self.ctx.bus.nc,
                APPROVALS,
                "rotate_device_key",
                {"tenant": tenant, "device_id": device},
                SYSTEM,
                timeout=ROTATE_TIMEOUT,
            )
        except CommandError as exc:
            log.error(
                "device key NOT rotated after an offline admin session: %s",
                exc,
                extra={"tenant": tenant, "device_id": device, "sessions": sessions},
            )
            return
        log.info(
            "device key rotated after an offline admin session",
            extra={
                "tenant": tenant,
                "device_id": device,
                "key_version": result.get("key_version"),
                "sessions": sessions,
            },
        )

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
