"""approval-svc's offline read model: tenant keys, policies, devices and their key state.

Its own SQLite file (projection ``offline``) with an outbox: what devices must
hear is queued in the same transaction as the write that causes it, and the
OutboxRelay publishes it on EPM_DEVICE with a deterministic ``Nats-Msg-Id``:

- OfflinePolicyChanged -> ``epm.device.<t>.<d>.policy`` to every enrolled device
  of the tenant (and DeviceEnrolled -> the current policy to the new device,
  should it have changed after the enrollment answer was written);
- DeviceKeyRotated -> ``epm.device.<t>.<d>.key``, the new key material sealed to
  the device (epm_domain.sealed);
- OfflineLockoutLifted -> ``epm.device.<t>.<d>.lockout``, a LockoutLift: the agent ends
  its offline-code lockout when it next reads its device channel.

AdminSessionStarted (replayed by request-svc) makes the device's key owed a rotation until a
DeviceKeyRotated follows it (``rotations_owed``; epm_approval.owed_rotations).

Tenant keys are stored as the ciphertext of TenantKeyCreated, never in clear.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from epm_domain.sealed import derive_device_keys, parse_public_key, seal_device_keys
from epm_events.agent import (
    KEY_KIND,
    LOCKOUT_KIND,
    POLICY_KIND,
    KeyUpdate,
    LockoutLift,
    PolicyUpdate,
)
from epm_events.catalog import (
    AdminSessionStarted,
    DeviceEnrolled,
    DeviceKeyRotated,
    DeviceRevoked,
    Event,
    OfflineCodeIssued,
    OfflineLockoutLifted,
    OfflinePolicy,
    OfflinePolicyChanged,
    OfflineResponseIssued,
    TenantKeyCreated,
)
from epm_events.ids import derived_event_id
from epm_events.subjects import device_subject
from epm_service.errors import CommandError
from epm_service.outbox import OUTBOX_SCHEMA, enqueue
from epm_service.projection import Applied, Handler, Projection

from epm_approval.offline import DeviceKeyState, evolve_key
from epm_approval.tenant_keys import TenantKeyring

log = logging.getLogger(__name__)


class OfflineView(Projection):
    name = "offline"
    only_handled = True
    schema = (
        """
    CREATE TABLE IF NOT EXISTS tenant_keys (
        tenant TEXT PRIMARY KEY, key_version INTEGER NOT NULL, ciphertext TEXT NOT NULL,
        seq INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS policies (
        tenant TEXT PRIMARY KEY, policy TEXT NOT NULL, changed_by TEXT NOT NULL,
        last_seq INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS devices (
        id TEXT PRIMARY KEY, tenant TEXT NOT NULL, public_key TEXT NOT NULL,
        encryption_key TEXT, revoked INTEGER NOT NULL DEFAULT 0,
        key_version INTEGER NOT NULL, next_counter INTEGER NOT NULL DEFAULT 0,
        key_seq INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX IF NOT EXISTS devices_by_tenant ON devices (tenant, revoked);
    CREATE TABLE IF NOT EXISTS codes (
        code_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, device_id TEXT NOT NULL,
        key_version INTEGER NOT NULL, counter INTEGER NOT NULL, purpose TEXT NOT NULL,
        code_hash TEXT NOT NULL, expires_at TEXT NOT NULL, issued_by TEXT NOT NULL,
        self_generated INTEGER NOT NULL, seq INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS codes_by_device ON codes (device_id, key_version, counter);
    -- the last offline full-admin session replayed per device, and the last key rotation:
    -- a rotation is owed while the session is the later (epm_approval.owed_rotations)
    CREATE TABLE IF NOT EXISTS admin_sessions (
        device_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, session_seq INTEGER NOT NULL,
        rotated_seq INTEGER NOT NULL DEFAULT 0
    );
    """
        + OUTBOX_SCHEMA
    )

    def __init__(self, keyring: TenantKeyring) -> None:
        self.keyring = keyring

    def handlers(self) -> Mapping[type[Event], Handler]:
        return {
            TenantKeyCreated: on_tenant_key_created,
            OfflinePolicyChanged: on_policy_changed,
            DeviceEnrolled: on_device_enrolled,
            DeviceRevoked: on_device_revoked,
            DeviceKeyRotated: self.on_key_rotated,
            OfflineCodeIssued: on_key_event,
            OfflineResponseIssued: on_key_event,
            OfflineLockoutLifted: on_lockout_lifted,
            AdminSessionStarted: on_admin_session,
        }

    def on_key_rotated(self, conn: sqlite3.Connection, e: DeviceKeyRotated, at: Applied) -> None:
        on_key_event(conn, e, at)
        conn.execute(
            "UPDATE admin_sessions SET rotated_seq = ? WHERE device_id = ?", (at.seq, e.device_id)
        )
        device = find_device(conn, e.device_id)
        key = find_tenant_key(conn, at.env.tenant)
        if device is None or device.revoked or not device.encryption_key or key is None:
            return
        try:
            master = self.keyring.open(at.env.tenant, key[0], key[1])
        except CommandError as exc:
            # Not the event's fault: the device hears of its new key once the service has
            # EPM_MASTER_KEY again and rotates once more. Never dead-letter a good event.
            log.error(
                "cannot send the rotated key to the device: %s",
                exc.detail,
                extra={"tenant": at.env.tenant, "device_id": e.device_id},
            )
            return
        keys = derive_device_keys(master, at.env.tenant, e.device_id, e.key_version)
        material = seal_device_keys(keys, parse_public_key(device.encryption_key))
        update = KeyUpdate(
            tenant=at.env.tenant,
            device_id=e.device_id,
            key_version=e.key_version,
            sealed=material["sealed"],
            reason=e.reason,
        )
        enqueue(
            conn,
            device_subject(at.env.tenant, e.device_id, KEY_KIND),
            update.model_dump_json().encode(),
            derived_event_id(at.env.id, KEY_KIND),
        )


# --- tenant keys and policies --------------------------------------------------------------


def on_tenant_key_created(conn: sqlite3.Connection, e: TenantKeyCreated, at: Applied) -> None:
    # The first key of a tenant wins (expected sequence 0 makes it the only one).
    conn.execute(
        "INSERT OR IGNORE INTO tenant_keys (tenant, key_version, ciphertext, seq) VALUES (?,?,?,?)",
        (e.tenant_id, e.key_version, e.ciphertext, at.seq),
    )


def find_tenant_key(conn: sqlite3.Connection, tenant: str) -> tuple[int, str] | None:
    """(key version, ciphertext under EPM_MASTER_KEY) of the tenant's offline key."""
    row = conn.execute(
        "SELECT key_version, ciphertext FROM tenant_keys WHERE tenant = ?", (tenant,)
    ).fetchone()
    return (int(row[0]), str(row[1])) if row else None


def on_policy_changed(conn: sqlite3.Connection, e: OfflinePolicyChanged, at: Applied) -> None:
    conn.execute(
        "INSERT INTO policies (tenant, policy, changed_by, last_seq) VALUES (?,?,?,?) "
        "ON CONFLICT (tenant) DO UPDATE SET policy = excluded.policy, "
        "changed_by = excluded.changed_by, last_seq = excluded.last_seq",
        (e.tenant_id, e.policy.model_dump_json(), e.changed_by, at.seq),
    )
    update = PolicyUpdate(tenant=e.tenant_id, policy=e.policy, seq=at.seq).model_dump_json()
    devices = conn.execute(
        "SELECT id FROM devices WHERE tenant = ? AND revoked = 0 ORDER BY id", (e.tenant_id,)
    ).fetchall()
    for (device_id,) in devices:
        enqueue(
            conn,
            device_subject(e.tenant_id, device_id, POLICY_KIND),
            update.encode(),
            derived_event_id(f"{at.env.id}:{device_id}", POLICY_KIND),
        )


def find_policy(conn: sqlite3.Connection, tenant: str) -> tuple[OfflinePolicy, int]:
    """The tenant's policy (API.md's defaults until first set) and its last sequence."""
    row = conn.execute(
        "SELECT policy, last_seq FROM policies WHERE tenant = ?", (tenant,)
    ).fetchone()
    if row is None:
        return OfflinePolicy(), 0
    return OfflinePolicy.model_validate(orjson.loads(row[0])), int(row[1])


# --- devices ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OfflineDevice:
    id: str
    tenant: str
    public_key: str  # Ed25519, base64
    encryption_key: str | None  # X25519, base64
    revoked: bool
    key: DeviceKeyState

    def to_api(self) -> dict[str, Any]:
        return {
            "device_id": self.id,
            "tenant": self.tenant,
            "key_version": self.key.key_version,
            "codes_issued": self.key.next_counter,
            "revoked": self.revoked,
        }


def on_device_enrolled(conn: sqlite3.Connection, e: DeviceEnrolled, at: Applied) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO devices (id, tenant, public_key, encryption_key, key_version) "
        "VALUES (?,?,?,?,?)",
        (e.device_id, at.env.tenant, e.public_key, e.encryption_key, e.key_version),
    )
    row = conn.execute(
        "SELECT policy, last_seq FROM policies WHERE tenant = ?", (at.env.tenant,)
    ).fetchone()
    if row is not None:
        update = PolicyUpdate(
            tenant=at.env.tenant, policy=OfflinePolicy.model_validate_json(row[0]), seq=row[1]
        )
        enqueue(
            conn,
            device_subject(at.env.tenant, e.device_id, POLICY_KIND),
            update.model_dump_json().encode(),
            derived_event_id(f"{at.env.id}:{e.device_id}", POLICY_KIND),
        )


def on_device_revoked(conn: sqlite3.Connection, e: DeviceRevoked, at: Applied) -> None:
    conn.execute("UPDATE devices SET revoked = 1 WHERE id = ?", (e.device_id,))


def on_admin_session(conn: sqlite3.Connection, e: AdminSessionStarted, at: Applied) -> None:
    """A replayed offline full-admin session: the device's key is owed a rotation (DESIGN.md,
    at its next online contact) until a DeviceKeyRotated comes after it."""
    conn.execute(
        "INSERT INTO admin_sessions (device_id, tenant, session_seq) VALUES (?, ?, ?)"
        " ON CONFLICT (device_id) DO UPDATE SET"
        " session_seq = max(session_seq, excluded.session_seq)",
        (e.device_id, at.env.tenant, at.seq),
    )


def rotations_owed(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    """(tenant, device id) of every enrolled device whose last admin session came after its
    last key rotation."""
    rows = conn.execute(
        "SELECT a.tenant, a.device_id FROM admin_sessions a JOIN devices d ON d.id = a.device_id"
        " WHERE a.session_seq > a.rotated_seq AND d.revoked = 0 ORDER BY a.session_seq"
    ).fetchall()
    return [(str(t), str(d)) for t, d in rows]


def on_key_event(conn: sqlite3.Connection, e: Event, at: Applied) -> None:
    """DeviceKeyRotated, OfflineCodeIssued, OfflineResponseIssued, OfflineLockoutLifted: the
    device's key state."""
    device = find_device(conn, e.aggregate_id)
    if device is None:  # pragma: no cover - issued only for devices this view knows
        return
    state = evolve_key(device.key, e, at.seq)
    conn.execute(
        "UPDATE devices SET key_version = ?, next_counter = ?, key_seq = ? WHERE id = ?",
        (state.key_version, state.next_counter, state.last_seq, device.id),
    )
    if isinstance(e, OfflineCodeIssued):
        conn.execute(
            "INSERT OR IGNORE INTO codes (code_id, tenant, device_id, key_version, counter, "
            "purpose, code_hash, expires_at, issued_by, self_generated, seq) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                e.code_id,
                at.env.tenant,
                e.device_id,
                e.key_version,
                e.counter,
                e.purpose,
                e.code_hash,
                e.expires_at.isoformat(),
                e.issued_by,
                int(e.self_generated),
                at.seq,
            ),
        )


def on_lockout_lifted(conn: sqlite3.Connection, e: OfflineLockoutLifted, at: Applied) -> None:
    """The aggregate's sequence moves on; the device hears of the lift (if it is still one)."""
    on_key_event(conn, e, at)
    device = find_device(conn, e.device_id)
    if device is None or device.revoked:
        return
    lift = LockoutLift(
        tenant=at.env.tenant, device_id=e.device_id, lifted_by=e.lifted_by, reason=e.reason
    )
    enqueue(
        conn,
        device_subject(at.env.tenant, e.device_id, LOCKOUT_KIND),
        lift.model_dump_json().encode(),
        derived_event_id(at.env.id, LOCKOUT_KIND),
    )


def find_device(conn: sqlite3.Connection, device_id: str) -> OfflineDevice | None:
    row = conn.execute(
        "SELECT id, tenant, public_key, encryption_key, revoked, key_version, next_counter, "
        "key_seq FROM devices WHERE id = ?",
        (device_id,),
    ).fetchone()
    if row is None:
        return None
    did, tenant, public_key, encryption_key, revoked, version, nxt, seq = row
    return OfflineDevice(
        did,
        tenant,
        public_key,
        encryption_key,
        bool(revoked),
        DeviceKeyState(int(version), int(nxt), int(seq)),
    )
