"""The agent's state dir: who this device is and what it asked, in one SQLite file.

Layout of ``--state-dir`` (mode 0700):

- ``state.sqlite`` (0600): identity, requests, the EPM_DEVICE read position,
  and the tables the offline features fill (offline log, used code counters,
  lockout). Schema changes are numbered migrations (``PRAGMA user_version``):
  later releases append to ``MIGRATIONS``, never edit an applied one.
- ``device.key`` (0600): the Ed25519 private key (PEM, PKCS#8), never printed.
- ``encryption.key`` (0600): the X25519 private key (raw 32 bytes) the server seals
  offline key material to. The key material itself is kept as it arrived, sealed
  (``device_keys``), and opened only when a code is checked.
- ``nats.creds`` (0600), when the server hands out per-device NATS credentials.
- ``nats-ca.pem`` (0600), the CA trusted for NATS instead of the system's when one was
  given at enrollment (``epm_agent.nats_tls``).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from epm_events.agent import ReplayAck, RequestAnswer

from epm_agent.device_messages import DeviceMessage, KeyUpdate, LockoutLift, PolicyChange
from epm_agent.errors import AgentError, NotEnrolled
from epm_agent.offline_state import (
    apply_key_update,
    apply_lockout_lift,
    apply_replay_ack,
    save_key,
)
from epm_agent.private_file import PRIVATE_FILE_MODE

DIR_MODE = 0o700
STATE_DIR_ENV = "EPM_AGENT_STATE_DIR"

FINAL_STATUSES = frozenset({"approved", "denied", "expired"})

MIGRATIONS: tuple[str, ...] = (
    # 1: identity, requests, device channel position
    """
    CREATE TABLE identity (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        device_id TEXT NOT NULL,
        tenant TEXT NOT NULL,
        hostname TEXT NOT NULL,
        server_url TEXT NOT NULL,
        nats_url TEXT NOT NULL,
        nats_user TEXT,
        nats_password TEXT,
        nats_creds_file TEXT,
        inbox_prefix TEXT NOT NULL,
        subjects TEXT NOT NULL,
        policy TEXT NOT NULL,
        key_material TEXT,
        enrolled_at TEXT NOT NULL
    );
    CREATE TABLE requests (
        request_id TEXT PRIMARY KEY,
        msg_id TEXT,
        status TEXT NOT NULL,
        decided_by TEXT,
        rule_id TEXT,
        scope TEXT,
        app TEXT,
        user TEXT,
        reason TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE device_channel (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        last_seq INTEGER NOT NULL,
        synced_at TEXT
    );
    INSERT INTO device_channel (id, last_seq) VALUES (1, 0);
    -- every EPM_DEVICE message read, by message id: a re-sent message is never applied twice
    CREATE TABLE device_messages (
        msg_id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL,
        kind TEXT NOT NULL,
        request_id TEXT,
        outcome TEXT NOT NULL,
        received_at TEXT NOT NULL
    );
    -- offline features (later releases): tamper-evident log, used codes, lockout
    CREATE TABLE offline_log (
        seq INTEGER PRIMARY KEY,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL,
        record TEXT NOT NULL,
        device_time TEXT NOT NULL,
        confirmed INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE used_counters (
        purpose TEXT NOT NULL,
        key_version INTEGER NOT NULL,
        counter INTEGER NOT NULL,
        used_at TEXT NOT NULL,
        PRIMARY KEY (purpose, key_version, counter)
    );
    CREATE TABLE lockout (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        failures INTEGER NOT NULL DEFAULT 0,
        locked_until TEXT,
        cooloff_seconds REAL NOT NULL DEFAULT 0
    );
    """,
    # 2: the offline policy follows the server (``policy`` messages on EPM_DEVICE)
    """
    ALTER TABLE identity ADD COLUMN policy_seq INTEGER NOT NULL DEFAULT 0;
    """,
    # 3: offline codes: key versions, challenges, admin sessions, the lockout schedule
    """
    CREATE TABLE device_keys (
        key_version INTEGER PRIMARY KEY,
        key_material TEXT NOT NULL,
        reason TEXT NOT NULL,
        received_at TEXT NOT NULL
    );
    INSERT INTO device_keys (key_version, key_material, reason, received_at)
        SELECT json_extract(key_material, '$.key_version'), key_material, 'enrolled', enrolled_at
        FROM identity
        WHERE key_material IS NOT NULL
          AND json_type(key_material, '$.key_version') = 'integer';
    CREATE TABLE offline_challenges (
        request_code TEXT PRIMARY KEY,
        grant_kind TEXT NOT NULL,
        sha256 TEXT,
        app TEXT,
        minutes INTEGER NOT NULL DEFAULT 0,
        user TEXT NOT NULL,
        created_at TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending',
        failures INTEGER NOT NULL DEFAULT 0,
        closed_at TEXT,
        response_hash TEXT
    );
    CREATE TABLE admin_sessions (
        started_seq INTEGER PRIMARY KEY,
        user TEXT NOT NULL,
        minutes INTEGER NOT NULL,
        started_at TEXT NOT NULL,
        ends_at TEXT NOT NULL,
        ended_seq INTEGER
    );
    ALTER TABLE lockout ADD COLUMN lockouts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE lockout ADD COLUMN last_failure_at TEXT;
    INSERT OR IGNORE INTO lockout (id) VALUES (1);
    """,
    # 4: uploading the offline log: when the stream acknowledged a record's batch
    # (``sent_at``); ``confirmed`` (from migration 1) once request-svc processed it
    """
    ALTER TABLE offline_log ADD COLUMN sent_at TEXT;
    CREATE INDEX offline_log_unsent ON offline_log (sent_at, seq);
    """,
    # 5: a record request-svc processed but refused: the kind of its alert (log_tampered,
    # log_fork), from the ReplayAck of this device's own upload
    """
    ALTER TABLE offline_log ADD COLUMN refused TEXT;
    """,
    # 6: a technician's once-approval the user used as it arrived (``used_at``), and when
    # the stream acknowledged the agent's report of it (``use_reported_at``)
    """
    ALTER TABLE requests ADD COLUMN used_at TEXT;
    ALTER TABLE requests ADD COLUMN use_reported_at TEXT;
    """,
)


def default_state_dir() -> Path:
    env = os.environ.get(STATE_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".epm-agent"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Identity:
    """What enrollment gave this device (secrets stay in files, not in ``repr``)."""

    device_id: str
    tenant: str
    hostname: str
    server_url: str
    nats_url: str
    inbox_prefix: str
    subjects: dict[str, Any]
    policy: dict[str, Any]
    key_material: Any = None
    nats_user: str | None = None
    nats_password: str | None = field(default=None, repr=False)
    nats_creds_file: str | None = None
    enrolled_at: str = ""


@dataclass(frozen=True, slots=True)
class LocalRequest:
    request_id: str
    status: str
    created_at: str
    updated_at: str
    msg_id: str | None = None
    decided_by: str | None = None
    rule_id: str | None = None
    scope: str | None = None
    app: dict[str, Any] | None = None
    user: str | None = None
    reason: str | None = None


class StateDir:
    """One agent's state dir. Open it with ``StateDir(path).open()``; close when done."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = (path or default_state_dir()).expanduser()
        self._db: sqlite3.Connection | None = None

    @property
    def db_path(self) -> Path:
        return self.path / "state.sqlite"

    @property
    def key_path(self) -> Path:
        return self.path / "device.key"

    @property
    def creds_path(self) -> Path:
        return self.path / "nats.creds"

    @property
    def nats_ca_path(self) -> Path:
        return self.path / "nats-ca.pem"

    def open(self, *, create: bool = True) -> StateDir:
        """Open (and with ``create`` make) the state dir; without it a missing one means
        this agent was never enrolled."""
        if not create and not self.db_path.exists():
            raise NotEnrolled(self.path)
        try:
            self.path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            if not self.db_path.exists():
                os.close(os.open(self.db_path, os.O_WRONLY | os.O_CREAT, PRIVATE_FILE_MODE))
            db = sqlite3.connect(self.db_path, timeout=10, isolation_level=None)
        except OSError as exc:
            raise AgentError(
                f"cannot use the state dir {self.path}: {exc.strerror or exc}; "
                "pass a writable --state-dir"
            ) from None
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        self._db = db
        self._migrate()
        return self

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> StateDir:
        return self if self._db is not None else self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def is_open(self) -> bool:
        return self._db is not None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("state dir is not open")
        return self._db

    def _migrate(self) -> None:
        (version,) = self.db.execute("PRAGMA user_version").fetchone()
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            with self._transaction():
                for statement in _statements(script):
                    self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version = {number}")

    def transaction(
        self, *, durable: bool = False
    ) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE): all of it, or nothing.

        ``durable``: on disk before the commit returns, also through a power cut or an OS
        crash (``synchronous=FULL``: the WAL is synced at the commit). For what must never
        be undone: a privileged action's log record, a spent code, a failed attempt. The
        rest (marks of what was uploaded, say) is only resent if lost."""
        if durable:
            return self._durable_transaction()
        return self._transaction()

    @contextlib.contextmanager
    def _durable_transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("PRAGMA synchronous=FULL")
        try:
            with self._transaction() as db:
                yield db
        finally:
            if not self.db.in_transaction:  # SQLite refuses the change inside one
                self.db.execute("PRAGMA synchronous=NORMAL")

    @property
    def encryption_key_path(self) -> Path:
        return self.path / "encryption.key"

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        try:
            self.db.execute("COMMIT")
        except sqlite3.Error:
            if self.db.in_transaction:  # a failed COMMIT (disk full, I/O) may leave it open
                self.db.execute("ROLLBACK")
            raise

    # --- identity --------------------------------------------------------

    def identity(self) -> Identity | None:
        row = self.db.execute(
            "SELECT device_id, tenant, hostname, server_url, nats_url, inbox_prefix, subjects, "
            "policy, key_material, nats_user, nats_password, nats_creds_file, enrolled_at "
            "FROM identity WHERE id = 1"
        ).fetchone()
        if row is None:
            return None
        return Identity(
            device_id=row[0],
            tenant=row[1],
            hostname=row[2],
            server_url=row[3],
            nats_url=row[4],
            inbox_prefix=row[5],
            subjects=orjson.loads(row[6]),
            policy=orjson.loads(row[7]),
            key_material=orjson.loads(row[8]) if row[8] is not None else None,
            nats_user=row[9],
            nats_password=row[10],
            nats_creds_file=row[11],
            enrolled_at=row[12],
        )

    def require_identity(self) -> Identity:
        identity = self.identity()
        if identity is None:
            raise NotEnrolled(self.path)
        return identity

    def save_identity(self, identity: Identity) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO identity (id, device_id, tenant, hostname, server_url, nats_url, "
                "inbox_prefix, subjects, policy, key_material, nats_user, nats_password, "
                "nats_creds_file, enrolled_at) VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    identity.device_id,
                    identity.tenant,
                    identity.hostname,
                    identity.server_url,
                    identity.nats_url,
                    identity.inbox_prefix,
                    orjson.dumps(identity.subjects).decode(),
                    orjson.dumps(identity.policy).decode(),
                    None
                    if identity.key_material is None
                    else orjson.dumps(identity.key_material).decode(),
                    identity.nats_user,
                    identity.nats_password,
                    identity.nats_creds_file,
                    identity.enrolled_at or now_iso(),
                ),
            )
            material = identity.key_material
            if isinstance(material, dict) and isinstance(material.get("key_version"), int):
                save_key(db, material["key_version"], material, "enrolled")

    # --- requests --------------------------------------------------------

    def record_request(self, request: LocalRequest) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO requests (request_id, msg_id, status, decided_by, rule_id, "
                "scope, app, user, reason, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    request.request_id,
                    request.msg_id,
                    request.status,
                    request.decided_by,
                    request.rule_id,
                    request.scope,
                    None if request.app is None else orjson.dumps(request.app).decode(),
                    request.user,
                    request.reason,
                    request.created_at,
                    request.updated_at,
                ),
            )

    def apply_answer(self, answer: RequestAnswer) -> bool:
        """Record what the server answered; True if it changed the request."""
        with self._transaction() as db:
            return _apply_answer(db, answer)

    def mark_used(self, request_id: str) -> None:
        """The user used this request's approval (once; a later mark changes nothing)."""
        with self._transaction() as db:
            db.execute(
                "UPDATE requests SET used_at = ? WHERE request_id = ? AND used_at IS NULL",
                (now_iso(), request_id),
            )

    def unreported_uses(self) -> list[str]:
        """Requests whose used approval the server was not told of yet, oldest first."""
        rows = self.db.execute(
            "SELECT request_id FROM requests WHERE used_at IS NOT NULL "
            "AND use_reported_at IS NULL ORDER BY used_at, request_id"
        ).fetchall()
        return [r[0] for r in rows]

    def mark_use_reported(self, request_id: str) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE requests SET use_reported_at = ? WHERE request_id = ?",
                (now_iso(), request_id),
            )

    def request(self, request_id: str) -> LocalRequest | None:
        row = self.db.execute(
            f"SELECT {_REQUEST_COLUMNS} FROM requests WHERE request_id = ?", (request_id,)
        ).fetchone()
        return None if row is None else _request_of(row)

    def requests(self) -> list[LocalRequest]:
        rows = self.db.execute(
            f"SELECT {_REQUEST_COLUMNS} FROM requests ORDER BY created_at, request_id"
        ).fetchall()
        return [_request_of(r) for r in rows]

    # --- device channel (EPM_DEVICE) ------------------------------------

    def last_device_seq(self) -> int:
        (seq,) = self.db.execute("SELECT last_seq FROM device_channel WHERE id = 1").fetchone()
        return int(seq)

    def apply_device_message(
        self, seq: int, msg_id: str, kind: str, message: DeviceMessage | None
    ) -> bool:
        """Apply one EPM_DEVICE message and advance the read position in one transaction.

        Idempotent twice over: by stream sequence (never read back) and by message id
        (a message the server sends again is recorded once). True if it changed a request.
        """
        with self._transaction() as db:
            last = db.execute("SELECT last_seq FROM device_channel WHERE id = 1").fetchone()[0]
            if seq <= last:
                return False
            db.execute(
                "UPDATE device_channel SET last_seq = ?, synced_at = ? WHERE id = 1",
                (seq, now_iso()),
            )
            seen = db.execute(
                "SELECT 1 FROM device_messages WHERE msg_id = ?", (msg_id,)
            ).fetchone()
            if seen:
                return False
            if isinstance(message, RequestAnswer):
                changed = _apply_answer(db, message)
            elif isinstance(message, PolicyChange):
                changed = _apply_policy(db, message)
            elif isinstance(message, KeyUpdate):
                changed = apply_key_update(db, message)
            elif isinstance(message, LockoutLift):
                changed = apply_lockout_lift(db, message)
            elif isinstance(message, ReplayAck):
                changed = apply_replay_ack(db, message)
            else:
                changed = False
            request_id = message.request_id if isinstance(message, RequestAnswer) else None
            db.execute(
                "INSERT INTO device_messages (msg_id, seq, kind, request_id, outcome, "
                "received_at) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    msg_id,
                    seq,
                    kind,
                    request_id,
                    "applied" if changed else "ignored",
                    now_iso(),
                ),
            )
            return changed

    def device_messages_applied(self, request_id: str) -> int:
        """How many device-channel messages changed this request (at most one decision)."""
        (n,) = self.db.execute(
            "SELECT count(*) FROM device_messages WHERE request_id = ? AND outcome = 'applied'",
            (request_id,),
        ).fetchone()
        return int(n)


_REQUEST_COLUMNS = (
    "request_id, status, created_at, updated_at, msg_id, decided_by, rule_id, scope, app, "
    "user, reason"
)


def _request_of(row: tuple[Any, ...]) -> LocalRequest:
    return LocalRequest(
        request_id=row[0],
        status=row[1],
        created_at=row[2],
        updated_at=row[3],
        msg_id=row[4],
        decided_by=row[5],
        rule_id=row[6],
        scope=row[7],
        app=orjson.loads(row[8]) if row[8] is not None else None,
        user=row[9],
        reason=row[10],
    )


def _apply_answer(db: sqlite3.Connection, answer: RequestAnswer) -> bool:
    """First final answer wins, as on the server: a later one never overwrites it."""
    now = now_iso()
    row = db.execute(
        "SELECT status FROM requests WHERE request_id = ?", (answer.request_id,)
    ).fetchone()
    if row is None:
        # decided for this device but not asked from this state dir (e.g. restored backup)
        db.execute(
            "INSERT INTO requests (request_id, status, decided_by, rule_id, scope, created_at, "
            "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                answer.request_id,
                answer.status,
                answer.decided_by,
                answer.rule_id,
                answer.scope,
                now,
                now,
            ),
        )
        return True
    if row[0] in FINAL_STATUSES or answer.status == row[0]:
        return False
    db.execute(
        "UPDATE requests SET status = ?, decided_by = ?, rule_id = ?, scope = ?, updated_at = ? "
        "WHERE request_id = ?",
        (answer.status, answer.decided_by, answer.rule_id, answer.scope, now, answer.request_id),
    )
    return True


def _apply_policy(db: sqlite3.Connection, change: PolicyChange) -> bool:
    """The newest policy wins, whatever order updates are read in."""
    cursor = db.execute(
        "UPDATE identity SET policy = ?, policy_seq = ? WHERE id = 1 AND policy_seq < ?",
        (orjson.dumps(change.policy).decode(), change.seq, change.seq),
    )
    return cursor.rowcount > 0


def _statements(script: str) -> list[str]:
    lines = [line for line in script.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
