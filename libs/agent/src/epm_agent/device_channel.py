"""Reading what the server sent this device (EPM_DEVICE), from where the agent left off.

An ordered consumer filtered to ``epm.device.<tenant>.<device>.>`` starts at the
last sequence read + 1; each message is applied and the position advanced in
one SQLite transaction, so a crash never applies a decision twice nor skips one.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors
from epm_domain.sealed import SealedError, open_device_keys
from epm_events.streams import DEVICE
from epm_events.subjects import device_filter
from epm_service.natsauth import device_consumer_name
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from epm_agent.device_messages import DeviceMessage, KeyUpdate, decode_device_message
from epm_agent.encryption_key import EncryptionKey
from epm_agent.errors import AgentError
from epm_agent.state import Identity, StateDir


@dataclass(frozen=True, slots=True)
class DeviceUpdate:
    """One message read from the device channel; ``applied`` if it changed local state."""

    seq: int
    kind: str
    applied: bool
    message: DeviceMessage | None = None


class DeviceChannel:
    def __init__(self, js: JetStreamContext, state: StateDir, identity: Identity) -> None:
        self._js = js
        self._state = state
        self._identity = identity
        self._filter = device_filter(identity.tenant, identity.device_id)
        self._consumer = device_consumer_name(identity.tenant, identity.device_id)

    async def read(
        self,
        *,
        timeout: float = 10.0,
        until: Callable[[], bool] | None = None,
    ) -> list[DeviceUpdate]:
        """Apply everything new. Without ``until``: return once caught up. With it: keep
        reading (new messages included) until ``until()`` holds or ``timeout`` runs out."""
        deadline = time.monotonic() + timeout
        start = self._state.last_device_seq() + 1
        try:
            try:
                sub = await self._subscribe(start)
            except nats.js.errors.NotFoundError:
                raise
            except nats.js.errors.APIError:
                # the consumer of an earlier read lingers (a crash, a lost delete) and cannot
                # take the new start: replace it
                await self._delete_consumer()
                sub = await self._subscribe(start)
        except nats.js.errors.NotFoundError:
            raise AgentError(
                f"the server has no {DEVICE.name} stream, so decisions cannot reach this "
                "agent; an operator must run 'epm streams apply'"
            ) from None
        updates: list[DeviceUpdate] = []
        try:
            info = await sub.consumer_info()
            delivered = info.delivered.consumer_seq if info.delivered else 0
            caught_up = not info.num_pending and not delivered
            while True:
                if until is not None and until():
                    break
                if until is None and caught_up:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    msg = await sub.next_msg(timeout=left)
                except (TimeoutError, nats.errors.TimeoutError):
                    break
                updates.append(self._apply(msg))
                caught_up = msg.metadata.num_pending == 0
        finally:
            await sub.unsubscribe()
            await self._delete_consumer()
        return updates

    async def _subscribe(self, start: int) -> Any:
        """An ordered consumer on this device's subject only. Its name and filter are in the
        create subject (the device's NATS user may create no other), and it delivers under
        the device's inbox prefix (the connection's ``inbox_prefix``)."""
        return await self._js.subscribe(
            self._filter,
            stream=DEVICE.name,
            ordered_consumer=True,
            config=ConsumerConfig(
                name=self._consumer,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=start,
            ),
        )

    async def _delete_consumer(self) -> None:
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await self._js.delete_consumer(DEVICE.name, self._consumer)

    def _apply(self, msg: Msg) -> DeviceUpdate:
        seq = msg.metadata.sequence.stream
        kind = msg.subject.rsplit(".", 1)[-1]
        msg_id = (msg.headers or {}).get("Nats-Msg-Id") or f"seq-{seq}"
        message = decode_device_message(kind, msg.data)
        if isinstance(message, KeyUpdate) and not self._opens(message):
            message = None  # not sealed to this device for this version: read past it
        applied = self._state.apply_device_message(seq, msg_id, kind, message)
        return DeviceUpdate(seq=seq, kind=kind, applied=applied, message=message)

    def _opens(self, update: KeyUpdate) -> bool:
        """Key material is kept sealed; it must open here before it replaces the old."""
        try:
            key = EncryptionKey.load(self._state.encryption_key_path)
            open_device_keys(
                {"key_version": update.key_version, "sealed": update.sealed},
                key.private_raw,
                self._identity.tenant,
                self._identity.device_id,
            )
        except (AgentError, SealedError):
            return False
        return True
