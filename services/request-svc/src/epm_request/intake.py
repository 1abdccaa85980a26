"""Agent intake: what devices publish on EPM_AGENT becomes domain events, or is refused.

A durable push consumer with explicit acks (queue group, so replicas share
the work). Every message ends acknowledged: accepted, dead-lettered
(malformed), or refused with a SecurityAlertRaised (unsigned, bad signature,
unknown/revoked device, tenant mismatch). Only a transient failure (NATS
unreachable) leaves it unacked for redelivery. Messages of one device are
handled in order; different devices in parallel.

An offline log batch that would leave a gap while an earlier upload of the same device is
still unacknowledged in EPM_AGENT is put back (nak with a delay) rather than reported: a
replica killed while holding a device's batches gets them redelivered only after
``ack_wait``, and the device's next batches reach the restarted replica first. The gap
is reported once nothing earlier is pending, or after ``MAX_GAP_DEFERRALS`` deliveries.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import nats.js.errors
import orjson
from epm_domain.request import answer_of, create
from epm_events.agent import (
    REPLY_HEADER,
    SIGNATURE_HEADER,
    ApprovalUsed,
    ElevationRequested,
    OfflineLogBatch,
    RequestAnswer,
    signing_bytes,
)
from epm_events.catalog import DeviceRevoked, SecurityAlertRaised
from epm_events.ids import InvalidId, derived_event_id, derived_event_id_at, request_id_for
from epm_events.streams import AGENT, EVENTS
from epm_events.subjects import (
    ALL_AGENT,
    AgentSubject,
    agent_subject,
    device_inbox_prefix,
    parse_agent_subject,
)
from epm_service.bus import Bus
from epm_service.deadletter import dead_letter
from epm_service.errors import Conflict, Forbidden, NotFound, Unavailable
from epm_service.principal import SYSTEM
from epm_service.publisher import ConcurrencyConflict
from epm_service.rpc import call
from epm_service.runtime import ServiceContext
from epm_service.turns import Turns
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import ValidationError

from epm_request import store
from epm_request.admission import Malformed, Refused, checked_envelope
from epm_request.answers import PendingAnswers
from epm_request.commands import APPROVALS
from epm_request.replay import EarlierUploadPending, OfflineReplay

log = logging.getLogger(__name__)

DURABLE = "request-svc-intake"
MAX_DELIVER_BEFORE_DLQ = 5
ACK_WAIT = 30
GAP_RECHECK_DELAY = 2.0
"""Seconds before a batch put back for an earlier pending upload is delivered again."""
MAX_GAP_DEFERRALS = 3 * ACK_WAIT // 2
"""Deliveries of a batch after which its gap is reported even if an earlier upload still
looks pending (about 3 x ack_wait: every delivered message is redelivered by then)."""


USE_APPROVAL_TIMEOUT = 5.0
APPROVALS_RETRY_DELAY = 5.0
"""Seconds before a report approval-svc could not take is delivered again."""


class ApprovalsUnavailable(Exception):
    """approval-svc did not answer: the message is put back, not counted as failing."""


_UPLOAD_SUFFIX = "." + OfflineLogBatch.NAME


@dataclass(frozen=True, slots=True)
class Verified:
    subject: AgentSubject
    msg_id: str
    data: dict[str, Any]  # the CloudEvent's data; {} for an upload (checked where prepared)
    payload: bytes  # the CloudEvent as the device signed it
    reply_to: str | None
    received_at: datetime  # when EPM_AGENT stored the message
    stream_seq: int = 0  # its EPM_AGENT sequence
    delivered: int = 1  # how many times it was delivered, this time included


class AgentIntake:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.js = ctx.bus.js
        self.store = ctx.projection_process(store.RequestStore.name)
        self._sub: Any = None
        self._deliveries: Bus | None = None
        self._chains: dict[str, asyncio.Future[None]] = {}
        self._keys: dict[str, VerifyKey] = {}
        self._devices: dict[str, dict[str, Any]] = {}  # enrolled, not revoked (as of below)
        self._devices_as_of = 0  # the store's last DeviceRevoked when they were read
        self.replay = OfflineReplay(ctx, self.store)
        self.answers = PendingAnswers()
        # Uploads start one per loop turn (a storm's batches are milliseconds of CPU each,
        # and a thousand at once would be worked through before any acknowledgement is
        # read); online requests do not queue behind the uploads waiting for a turn.
        self._upload_turns = Turns()
        self.handlers: dict[str, Callable[[Verified], Awaitable[None]]] = {
            ElevationRequested.NAME: self.on_elevation_requested,
            OfflineLogBatch.NAME: self.on_offline_log_batch,
            ApprovalUsed.NAME: self.on_approval_used,
        }

    def _device(self, device_id: str) -> dict[str, Any] | None:
        """The device as the store has it. An enrolled device's tenant and key never change,
        so one not revoked is kept until the store commits a DeviceRevoked (``watched``):
        every online request and upload looked it up in SQLite before (about 40 µs)."""
        revoked = self.store.last_seq_of.get(DeviceRevoked.NAME, 0)
        if revoked != self._devices_as_of:
            self._devices.clear()
            self._devices_as_of = revoked
        device = self._devices.get(device_id)
        if device is None:
            device = self.store.read_now(lambda c: store.get_device(c, device_id))
            if device is not None and not device["revoked"]:
                if len(self._devices) > 100_000:
                    self._devices.clear()
                self._devices[device_id] = device
        return device

    async def _device_after_catching_up(self, device_id: str) -> dict[str, Any] | None:
        """A device not in the store may have enrolled a moment ago: look again once the
        store has applied everything EPM_EVENTS holds now (rare path, bounded wait)."""
        last = (await self.js.stream_info(EVENTS.name)).state.last_seq
        await self.store.wait_for(last, timeout=5)
        return self.store.read_now(lambda c: store.get_device(c, device_id))

    def _public_key(self, encoded: str) -> VerifyKey:
        """Parsed keys are kept: parsing costs more than verifying on the hot path. Verified
        with libsodium (PyNaCl): 55 µs a signature here, against 104 µs through
        cryptography's OpenSSL binding (bench/README.md, "Online request")."""
        key = self._keys.get(encoded)
        if key is None:
            if len(self._keys) > 100_000:
                self._keys.clear()
            key = self._keys[encoded] = VerifyKey(base64.b64decode(encoded))
        return key

    async def start(self) -> None:
        # Judge no device before the store knows every device: after a restart or a
        # rebuilt store, an enrolled device would otherwise look unknown (a false alert).
        await self.store.wait_caught_up()
        await self.answers.start(self.ctx.bus)
        await self.replay.start()
        # Deliveries come on a connection of their own. On the service's connection a
        # storm's uploads (a thousand of ~50 KB at once) queued ahead of the
        # acknowledgements of the first records appended: request-svc read and parsed
        # every upload before it learnt that one had been stored, and for about a second
        # of a full storm nothing reached the audit trail (bench/README.md, "Replay
        # storm", session 7).
        self._deliveries = await self.ctx.connection("intake")
        self._sub = await self._deliveries.js.subscribe(
            ALL_AGENT,
            durable=DURABLE,
            queue=DURABLE,
            stream=AGENT.name,
            cb=self._on_msg,
            manual_ack=True,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=ACK_WAIT,
                max_ack_pending=2000,
            ),
            pending_msgs_limit=-1,
            pending_bytes_limit=-1,
        )

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
        await self.answers.stop()
        await self.replay.stop()
        if self._deliveries is not None:
            await self._deliveries.close()

    async def _on_msg(self, msg: Msg) -> None:
        # Per-device order: chain each message after the previous one of its device.
        key = msg.subject.split(".", 4)[3] if msg.subject.count(".") >= 3 else ""
        prev = self._chains.get(key)
        task = asyncio.ensure_future(self._after(prev, msg))
        self._chains[key] = task
        task.add_done_callback(lambda t: self._forget(key, t))

    def _forget(self, key: str, task: asyncio.Future[None]) -> None:
        if self._chains.get(key) is task:
            del self._chains[key]

    async def _after(self, prev: asyncio.Future[None] | None, msg: Msg) -> None:
        if prev is not None:
            await asyncio.wait([prev])
        if msg.subject.endswith(_UPLOAD_SUFFIX):
            await self._upload_turns.take()
        await self.handle(msg)

    async def handle(self, msg: Msg) -> None:
        try:
            verified = await self.verify(msg)
            await self.handlers[verified.subject.event_name](verified)
        except EarlierUploadPending as pending:
            log.info(
                "offline log batch put back until an earlier upload is handled",
                extra={"subject": msg.subject, "detail": str(pending)},
            )
            await msg.nak(delay=GAP_RECHECK_DELAY)
            return
        except ApprovalsUnavailable as down:
            log.warning(
                "report put back until approval-svc answers: %s",
                down,
                extra={"subject": msg.subject},
            )
            await msg.nak(delay=APPROVALS_RETRY_DELAY)
            return
        except Refused as r:
            await self._alert(msg, r)
        except Malformed as m:
            await dead_letter(
                self.js,
                self.ctx.name,
                payload=msg.data,
                subject=msg.subject,
                reason=m.reason,
                detail=m.detail,
                stream=AGENT.name,
                seq=msg.metadata.sequence.stream,
            )
        except Exception:
            delivered = msg.metadata.num_delivered
            log.exception(
                "intake failed; will retry", extra={"subject": msg.subject, "delivered": delivered}
            )
            if delivered < MAX_DELIVER_BEFORE_DLQ:
                await msg.nak(delay=min(2**delivered, 30))
                return
            await dead_letter(
                self.js,
                self.ctx.name,
                payload=msg.data,
                subject=msg.subject,
                reason="processing_failed",
                detail=f"failed {delivered} times; see request-svc logs",
                stream=AGENT.name,
                seq=msg.metadata.sequence.stream,
            )
        await msg.ack()

    # --- verification ------------------------------------------------------------

    async def verify(self, msg: Msg) -> Verified:
        try:
            subject = parse_agent_subject(msg.subject)
        except InvalidId as exc:
            raise Malformed("invalid_subject", str(exc)) from None
        hdrs = msg.headers or {}
        msg_id = hdrs.get("Nats-Msg-Id")
        if not msg_id:
            raise Malformed("missing_msg_id", "agent messages need a Nats-Msg-Id header")
        device = self._device(subject.device)
        if device is None:
            device = await self._device_after_catching_up(subject.device)
        if device is None:
            raise Refused(
                "unknown_device",
                f"message from unknown device {subject.device!r}",
                subject.tenant,
                subject.device,
            )
        if device["tenant"] != subject.tenant:
            raise Refused(
                "tenant_mismatch",
                f"device {subject.device} belongs to another tenant than {subject.tenant!r}",
                device["tenant"],
                subject.device,
            )
        if device["revoked"]:
            raise Refused(
                "revoked_device",
                f"device {subject.device} is revoked",
                subject.tenant,
                subject.device,
            )
        signature = hdrs.get(SIGNATURE_HEADER)
        if not signature:
            raise Refused(
                "unsigned",
                f"unsigned message from device {subject.device}",
                subject.tenant,
                subject.device,
            )
        try:
            key = self._public_key(device["public_key"])
            key.verify(signing_bytes(msg.subject, msg_id, msg.data), base64.b64decode(signature))
        except (BadSignatureError, ValueError, TypeError):
            raise Refused(
                "bad_signature",
                f"signature of message {msg_id} does not verify with the key of "
                f"device {subject.device}",
                subject.tenant,
                subject.device,
            ) from None
        data: dict[str, Any] = {}
        if subject.event_name != OfflineLogBatch.NAME:
            # An upload's envelope is checked where it is prepared (epm_request.upload_prep,
            # in a worker process): parsing its records here would cost the event loop 2 µs
            # a record of a replay storm.
            data = checked_envelope(msg.data, msg_id, subject).data
        if subject.event_name not in self.handlers:
            raise Malformed("unknown_type", f"agents may not publish {subject.event_name!r}")
        reply_to = hdrs.get(REPLY_HEADER)
        if reply_to and not reply_to.startswith(
            device_inbox_prefix(subject.tenant, subject.device) + "."
        ):
            raise Refused(
                "foreign_inbox",
                f"reply subject {reply_to!r} is outside the device's inbox prefix",
                subject.tenant,
                subject.device,
            )
        return Verified(
            subject,
            msg_id,
            data,
            msg.data,
            reply_to,
            msg.metadata.timestamp,
            msg.metadata.sequence.stream,
            msg.metadata.num_delivered,
        )

    async def _alert(self, msg: Msg, r: Refused) -> None:
        msg_id = (msg.headers or {}).get(
            "Nats-Msg-Id"
        ) or f"{AGENT.name}:{msg.metadata.sequence.stream}"
        alert_id = "alert-" + derived_event_id(msg_id, "SecurityAlertRaised")[:18]
        event = SecurityAlertRaised(
            alert_id=alert_id,
            kind=r.kind,
            device_id=r.device_id,
            reason=r.reason,
            evidence={
                "subject": msg.subject,
                "msg_id": msg_id,
                "stream_seq": msg.metadata.sequence.stream,
                "size": len(msg.data),
            },
        )
        log.warning(
            "refused agent message: %s",
            r.reason,
            extra={"tenant": r.tenant, "device_id": r.device_id, "kind": r.kind},
        )
        # A conflict means it was raised already for this very message (redelivery).
        with contextlib.suppress(ConcurrencyConflict):
            await self.ctx.publisher.append(
                r.tenant, [event], 0, ids=[derived_event_id(msg_id, "SecurityAlertRaised")]
            )

    # --- handlers ----------------------------------------------------------------

    async def on_elevation_requested(self, v: Verified) -> None:
        try:
            body = ElevationRequested.model_validate(v.data)
        except ValidationError as exc:
            raise Malformed("invalid_data", str(exc).splitlines()[0]) from None
        tenant, device = v.subject.tenant, v.subject.device
        request_id = request_id_for(v.msg_id)
        now = datetime.now(UTC)
        event = create(
            request_id=request_id,
            device_id=device,
            user=body.user,
            app=body.app,
            reason=body.reason,
            now=now,
            ttl=timedelta(seconds=self.ctx.settings.request_ttl),
        )
        # Expected before the append: approval-svc's verdict may come before its ack.
        waiting = self.answers.expect(request_id)
        try:
            try:
                # Its id in time order: the events' indexes take it at their end.
                event_id = derived_event_id_at(v.msg_id, "RequestCreated", v.received_at)
                await self.ctx.publisher.append(tenant, [event], 0, ids=[event_id])
                created = True
            except ConcurrencyConflict:
                # Sent before (a redelivery or the agent's retry; nats-server checks the
                # expected sequence before the duplicate id): its verdict came then, so
                # answer what is known.
                created = False
            log.info(
                "request created" if created else "request sent again",
                extra={"tenant": tenant, "device_id": device, "request_id": request_id},
            )
            answer = await self.answers.wait(waiting) if created else None
        finally:
            self.answers.forget(request_id)
        if answer is None:
            if created:
                log.warning(
                    "no verdict from approval-svc in time; the agent gets what the store knows",
                    extra={"tenant": tenant, "request_id": request_id},
                )
            answer = await self._answer_from_store(request_id)
        if v.reply_to:
            # On the connection the request came by: the answer and the acknowledgement that
            # follows it leave in one write (one wake-up of nats-server, not two).
            bus = self._deliveries or self.ctx.bus
            await bus.nc.publish(v.reply_to, orjson.dumps(answer.model_dump(mode="json")))

    async def on_approval_used(self, v: Verified) -> None:
        """The device's user used its request's approval as it arrived: approval-svc spends
        a technician's once-approval on that very request (its ``use_approval``:
        GrantConsumed), so the grant answers no later request. While approval-svc cannot be
        reached the report is put back (nak with a delay), never dropped."""
        try:
            body = ApprovalUsed.model_validate(v.data)
        except ValidationError as exc:
            raise Malformed("invalid_data", str(exc).splitlines()[0]) from None
        tenant, device = v.subject.tenant, v.subject.device
        ids = {"tenant": tenant, "device_id": device, "request_id": body.request_id}
        try:
            used = await call(
                self.ctx.bus.nc,
                APPROVALS,
                "use_approval",
                {"tenant": tenant, "device_id": device, "request_id": body.request_id},
                SYSTEM,
                timeout=USE_APPROVAL_TIMEOUT,
            )
        except Unavailable as exc:
            raise ApprovalsUnavailable(str(exc)) from None
        except NotFound as exc:
            raise Malformed("unknown_request", exc.detail) from None
        except Forbidden as exc:
            raise Refused("foreign_request", exc.detail, tenant, device) from None
        except Conflict as exc:
            raise Malformed("not_approved", exc.detail) from None
        log.info(
            "approval used",
            extra={**ids, "grant_id": used.get("grant_id"), "consumed_by": used.get("consumed_by")},
        )

    async def on_offline_log_batch(self, v: Verified) -> None:
        """Records of the device's offline log (epm_request.replay), signed once per batch."""

        async def earlier_pending() -> bool:
            return await self._earlier_upload_unacked(v)

        await self.replay.replay(v.subject, v.msg_id, v.payload, v.received_at, earlier_pending)

    async def _earlier_upload_unacked(self, v: Verified) -> bool:
        """Whether EPM_AGENT holds an upload of this device before ``v`` that the consumer
        may not have acknowledged yet (it lies above the ack floor). Such an upload was
        delivered to a replica that died, or put back, and comes again: its records may be
        the ones missing. Bounded by ``MAX_GAP_DEFERRALS``, so a real gap is reported."""
        if not v.stream_seq or v.delivered >= MAX_GAP_DEFERRALS:
            return False
        info = await self.js.consumer_info(AGENT.name, DURABLE)
        floor = info.ack_floor.stream_seq if info.ack_floor else 0
        if floor + 1 >= v.stream_seq:
            return False
        try:
            earlier = await self.js.get_msg(
                AGENT.name,
                seq=floor + 1,
                subject=agent_subject(v.subject.tenant, v.subject.device, OfflineLogBatch.NAME),
                next=True,
            )
        except nats.js.errors.NotFoundError:
            return False
        return earlier.seq is not None and earlier.seq < v.stream_seq

    async def _answer_from_store(self, request_id: str) -> RequestAnswer:
        row = await self.store.read(lambda c: store.get_request_state(c, request_id))
        if row is not None:
            return answer_of(store.request_from_json(row[0]))
        return RequestAnswer(request_id=request_id, status="open")
