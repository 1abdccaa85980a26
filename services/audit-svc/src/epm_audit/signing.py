"""The checkpoint signing key and the worker that signs checkpoints.

The key is created once, by whichever replica needs it first: AuditKeyCreated
on ``_global.auditkey.<key_id>`` with expected sequence 0, so two replicas
racing store one key and both use it. Its private half travels only sealed
under ``EPM_MASTER_KEY`` (epm_service.secretbox), so a rebuilt projection
finds the same key in the stream and goes on signing with it. The opened key
lives in memory only, and never in a log.

The ``Checkpointer`` wakes when the trail advances (or after a second), asks
``CheckpointPolicy`` which chains are due, and appends one
AuditCheckpointSigned per due chain to that chain's tenant, with an id derived
from the head it signs and expected sequence 0, so replicas do not sign one
head twice.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import time
from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from epm_events.catalog import AuditCheckpointSigned, AuditKeyCreated
from epm_events.catalog import ChainHead as HeadModel
from epm_events.ids import GLOBAL_TENANT
from epm_service.aggregates import read_aggregate
from epm_service.errors import Unavailable
from epm_service.projection import Projector
from epm_service.publisher import ConcurrencyConflict, EventPublisher
from epm_service.secretbox import SecretBox, SecretBoxError
from epm_service.worker import TaskWorker

from epm_audit.chain import ChainHead
from epm_audit.checkpoint import (
    FIRST_KEY_ID,
    CheckpointPolicy,
    checkpoint_id,
    key_context,
    public_bytes,
    sign_heads,
)
from epm_audit.queries import checkpointed, key_events
from epm_audit.trail import chain_heads

log = logging.getLogger(__name__)

TICK_SECONDS = 1.0


class SigningKey:
    """The current checkpoint key: found in the trail, else created (once) and appended."""

    def __init__(
        self,
        trail: Projector,
        publisher: EventPublisher,
        master_key: str | None,
        previous_master_keys: Sequence[str] = (),
    ) -> None:
        self.trail = trail
        self.publisher = publisher
        self.master_key = master_key
        self.previous_master_keys = previous_master_keys  # a key sealed before a rotation
        self._key: tuple[str, Ed25519PrivateKey] | None = None

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self._key[0] if self._key else None!r})"

    async def current(self) -> tuple[str, Ed25519PrivateKey]:
        if self._key is None:
            box = self._box()
            found = await self.trail.read(key_events)
            data = found[-1] if found else await self._create(box)
            key_id = str(data["key_id"])
            try:
                raw = box.open(str(data["ciphertext"]), key_context(key_id))
            except SecretBoxError as exc:
                raise Unavailable(f"the audit signing key {key_id!r}: {exc}") from None
            self._key = (key_id, Ed25519PrivateKey.from_private_bytes(raw))
        return self._key

    def _box(self) -> SecretBox:
        try:
            return SecretBox.from_master_key(self.master_key, self.previous_master_keys)
        except SecretBoxError as exc:
            raise Unavailable(f"signed audit checkpoints need the deployment key: {exc}") from None

    async def _create(self, box: SecretBox) -> dict[str, object]:
        key = Ed25519PrivateKey.generate()
        event = AuditKeyCreated(
            key_id=FIRST_KEY_ID,
            public_key=base64.b64encode(public_bytes(key)).decode(),
            ciphertext=box.seal(key.private_bytes_raw(), key_context(FIRST_KEY_ID)),
        )
        try:
            await self.publisher.append(GLOBAL_TENANT, [event], 0)
            log.info("audit signing key created", extra={"key_id": FIRST_KEY_ID})
            return event.model_dump()
        except ConcurrencyConflict:  # another replica was first: use its key
            stored = await read_aggregate(
                self.publisher.js, GLOBAL_TENANT, AuditKeyCreated.AGGREGATE, FIRST_KEY_ID
            )
            return stored[0].event.model_dump()


class Checkpointer(TaskWorker):
    """Signs each chain's head when the policy says it is due (a background worker)."""

    task_name = "audit-checkpointer"

    def __init__(
        self,
        trail: Projector,
        publisher: EventPublisher,
        key: SigningKey,
        policy: CheckpointPolicy,
    ) -> None:
        self.trail = trail
        self.publisher = publisher
        self.key = key
        self.policy = policy
        self._covered: dict[str, int] = {}
        self._signed_at: dict[str, float] = {}

    async def _run(self) -> None:
        await self.trail.wait_caught_up()
        self._covered = await self.trail.read(checkpointed)
        started = time.monotonic()
        while True:
            position = self.trail.position
            try:
                await self.sign_due(started)
            except Exception:
                log.exception("could not sign audit checkpoints; trying again")
            await self.trail.wait_past(position, timeout=TICK_SECONDS)

    async def sign_due(self, started: float) -> int:
        """Sign every chain that is due now; returns how many were signed."""
        # What is committed: a read of everything received would end the trail's gathering
        # after each of its commits, and a storm's commits would stay small (bench/README.md).
        heads = await self.trail.read_committed(chain_heads)
        now = time.monotonic()
        signed = 0
        for tenant, head in sorted(heads.items()):
            covered = self._covered.get(tenant, 0)
            since = now - self._signed_at.get(tenant, started)
            if self.policy.due(head.records, covered, since):
                await self.sign(tenant, head)
                signed += 1
        return signed

    async def sign(self, tenant: str, head: ChainHead) -> None:
        key_id, key = await self.key.current()
        heads = {tenant: head}
        event = AuditCheckpointSigned(
            checkpoint_id=checkpoint_id(tenant, head),
            heads={t: HeadModel(records=h.records, hash=h.hash) for t, h in heads.items()},
            key_id=key_id,
            signature=sign_heads(key, heads),
        )
        with contextlib.suppress(ConcurrencyConflict):  # another replica signed this head
            await self.publisher.append(tenant, [event], 0, ids=[event.checkpoint_id])
        self._covered[tenant] = head.records
        self._signed_at[tenant] = time.monotonic()
        log.info(
            "audit checkpoint signed",
            extra={"tenant": tenant, "records": head.records, "key_id": key_id},
        )
