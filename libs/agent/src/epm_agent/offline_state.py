"""The offline tables of the state dir: key versions, challenges, used counters, lockout,
the offline log and admin sessions. Every change that lets something privileged happen
is one SQLite transaction with the log records that account for it."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from epm_events.agent import KeyUpdate, LockoutLift, ReplayAck
from epm_events.ids import offline_batch_id

from epm_agent.challenges import MAX_PENDING, Challenge
from epm_agent.clock import iso, parse_time
from epm_agent.errors import AgentError
from epm_agent.lockout import Lockout, after_failure, after_lift, after_success
from epm_agent.offline_log import GENESIS, LogRecord, new_record

if TYPE_CHECKING:
    from epm_agent.state import StateDir


class AlreadyUsed(AgentError):
    """The code was used between checking it and recording it (two commands at once)."""


@dataclass(frozen=True, slots=True)
class Redemption:
    """A good code, and what it lets happen: recorded before anything privileged runs."""

    user: str
    events: Sequence[tuple[str, Mapping[str, Any]]]  # (event name, its own fields)
    request_code: str | None = None  # a response code: the challenge it answers
    response_hash: str | None = None
    counter: tuple[str, int, int] | None = None  # an access code: (purpose, version, counter)
    admin_minutes: int = 0
    admin_ends_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class AdminSession:
    started_seq: int
    user: str
    minutes: int
    started_at: datetime
    ends_at: datetime


@dataclass(slots=True)
class FailureOutcome:
    lockout: Lockout
    spent: list[str] = field(default_factory=list)  # request codes that can no longer be used


class OfflineState:
    def __init__(self, state: StateDir) -> None:
        self.state = state

    @property
    def db(self) -> sqlite3.Connection:
        return self.state.db

    # --- key versions -------------------------------------------------------------

    def key_materials(self) -> list[tuple[int, Any]]:
        """(key_version, key_material), newest first: the first is the one in use."""
        rows = self.db.execute(
            "SELECT key_version, key_material FROM device_keys ORDER BY key_version DESC"
        ).fetchall()
        return [(int(v), orjson.loads(m)) for v, m in rows]

    def save_key_material(self, key_version: int, material: Any, reason: str) -> bool:
        with self.state.transaction() as db:
            return save_key(db, key_version, material, reason)

    # --- challenges -----------------------------------------------------------------

    def request_codes_shown(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT request_code FROM offline_challenges")}

    def add_challenge(self, challenge: Challenge) -> None:
        with self.state.transaction() as db:
            db.execute(
                "INSERT INTO offline_challenges (request_code, grant_kind, sha256, app, minutes, "
                "user, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    challenge.request_code,
                    challenge.grant,
                    challenge.sha256,
                    None if challenge.app is None else orjson.dumps(challenge.app).decode(),
                    challenge.minutes,
                    challenge.user,
                    iso(challenge.created_at),
                ),
            )
            db.execute(
                "UPDATE offline_challenges SET state = 'retired', closed_at = ? "
                "WHERE state = 'pending' AND request_code NOT IN (SELECT request_code FROM "
                "offline_challenges WHERE state = 'pending' ORDER BY created_at DESC, rowid DESC "
                "LIMIT ?)",
                (iso(challenge.created_at), MAX_PENDING),
            )

    def challenges(self, *states: str) -> list[Challenge]:
        marks = ",".join("?" * len(states))
        rows = self.db.execute(
            "SELECT request_code, grant_kind, created_at, user, sha256, app, minutes, state, "
            f"failures FROM offline_challenges WHERE state IN ({marks}) "
            "ORDER BY created_at DESC, rowid DESC",
            states,
        ).fetchall()
        return [
            Challenge(
                request_code=r[0],
                grant=r[1],
                created_at=parse_time(r[2], "created_at"),
                user=r[3],
                sha256=r[4],
                app=orjson.loads(r[5]) if r[5] else None,
                minutes=int(r[6]),
                state=r[7],
                failures=int(r[8]),
            )
            for r in rows
        ]

    def answered_by(self, response_hash: str) -> str | None:
        """When a challenge was answered by this response code (it works once)."""
        row = self.db.execute(
            "SELECT closed_at FROM offline_challenges WHERE response_hash = ?", (response_hash,)
        ).fetchone()
        return None if row is None else str(row[0])

    # --- used access-code counters ------------------------------------------------------

    def counter_used_at(self, key_version: int, counter: int) -> str | None:
        row = self.db.execute(
            "SELECT used_at FROM used_counters WHERE key_version = ? AND counter = ?",
            (key_version, counter),
        ).fetchone()
        return None if row is None else str(row[0])

    # --- lockout --------------------------------------------------------------------------

    def lockout(self) -> Lockout:
        return read_lockout(self.db)

    def record_failure(self, now: datetime, request_codes: Sequence[str] = ()) -> FailureOutcome:
        """One wrong code (against these pending challenges, for a response code); durable,
        so switching the machine off does not reset the lockout."""
        with self.state.transaction(durable=True) as db:
            lockout = after_failure(read_lockout(db), now)
            write_lockout(db, lockout)
            out = FailureOutcome(lockout)
            for code in request_codes:
                db.execute(
                    "UPDATE offline_challenges SET failures = failures + 1 WHERE request_code = ?",
                    (code,),
                )
            if lockout.locked(now):
                # A lockout spends every waiting challenge: after it, ask for a new request code.
                out.spent = [
                    r[0]
                    for r in db.execute(
                        "SELECT request_code FROM offline_challenges WHERE state = 'pending'"
                    )
                ]
                db.execute(
                    "UPDATE offline_challenges SET state = 'spent', closed_at = ? "
                    "WHERE state = 'pending'",
                    (iso(now),),
                )
            return out

    # --- redemption and the offline log -------------------------------------------------

    def redeem(self, device_id: str, now: datetime, redemption: Redemption) -> list[LogRecord]:
        """Spend the code and write its records in one durable transaction (on disk before
        the action is allowed, whatever stops the machine); AlreadyUsed if a concurrent
        command spent it first."""
        with self.state.transaction(durable=True) as db:
            if redemption.request_code is not None:
                changed = db.execute(
                    "UPDATE offline_challenges SET state = 'used', closed_at = ?, "
                    "response_hash = ? WHERE request_code = ? AND state = 'pending'",
                    (iso(now), redemption.response_hash, redemption.request_code),
                ).rowcount
                if not changed:
                    raise AlreadyUsed("this request code was answered already")
            if redemption.counter is not None:
                purpose, version, counter = redemption.counter
                try:
                    db.execute(
                        "INSERT INTO used_counters (purpose, key_version, counter, used_at) "
                        "VALUES (?, ?, ?, ?)",
                        (purpose, version, counter, iso(now)),
                    )
                except sqlite3.IntegrityError:
                    raise AlreadyUsed("this code was used already") from None
            write_lockout(db, after_success(read_lockout(db)))
            records = [
                append_record(db, name, device_id, now, fields)
                for name, fields in redemption.events
            ]
            if redemption.admin_ends_at is not None:
                started = next(r for r in records if r.type == "AdminSessionStarted")
                db.execute(
                    "INSERT INTO admin_sessions (started_seq, user, minutes, started_at, ends_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (
                        started.seq,
                        redemption.user,
                        redemption.admin_minutes,
                        iso(now),
                        iso(redemption.admin_ends_at),
                    ),
                )
            return records

    def open_admin_sessions(self) -> list[AdminSession]:
        rows = self.db.execute(
            "SELECT started_seq, user, minutes, started_at, ends_at FROM admin_sessions "
            "WHERE ended_seq IS NULL ORDER BY started_seq"
        ).fetchall()
        return [
            AdminSession(
                int(r[0]), r[1], int(r[2]), parse_time(r[3], "started_at"), parse_time(r[4], "ends")
            )
            for r in rows
        ]

    def end_admin_session(self, device_id: str, session: AdminSession) -> LogRecord | None:
        """Write AdminSessionEnded at the session's end time (once, whenever it is noticed)."""
        with self.state.transaction(durable=True) as db:
            still_open = db.execute(
                "SELECT 1 FROM admin_sessions WHERE started_seq = ? AND ended_seq IS NULL",
                (session.started_seq,),
            ).fetchone()
            if not still_open:
                return None
            record = append_record(
                db, "AdminSessionEnded", device_id, session.ends_at, {"user": session.user}
            )
            db.execute(
                "UPDATE admin_sessions SET ended_seq = ? WHERE started_seq = ?",
                (record.seq, session.started_seq),
            )
            return record

    # --- uploading the log ----------------------------------------------------------------

    def unsent(self, limit: int, resend_before: str | None = None) -> list[LogRecord]:
        """The oldest records not yet acknowledged by the stream (and, with
        ``resend_before``, those sent before then that the server never confirmed)."""
        rows = self.db.execute(
            "SELECT seq, prev_hash, hash, record FROM offline_log WHERE sent_at IS NULL "
            "OR (confirmed = 0 AND sent_at < ?) ORDER BY seq LIMIT ?",
            (resend_before or "", limit),
        ).fetchall()
        return [LogRecord(int(r[0]), r[1], r[2], orjson.loads(r[3])) for r in rows]

    def mark_sent(self, first_seq: int, last_seq: int, at: str) -> None:
        with self.state.transaction() as db:
            db.execute(
                "UPDATE offline_log SET sent_at = ? WHERE seq BETWEEN ? AND ?",
                (at, first_seq, last_seq),
            )

    def upload_counts(self) -> tuple[int, int, int]:
        """(records, sent, confirmed) of the whole log; confirmed: processed by request-svc,
        refused records included (they are settled too: see ``refused``)."""
        row = self.db.execute(
            "SELECT count(*), count(sent_at), coalesce(sum(confirmed), 0) FROM offline_log"
        ).fetchone()
        return int(row[0]), int(row[1]), int(row[2])

    def refused(self) -> dict[str, list[int]]:
        """The records request-svc refused, by the kind of alert it raised (log_tampered:
        edited after they were written; log_fork: the server holds other records under
        these sequences, from a copy of this state dir or a restored one)."""
        out: dict[str, list[int]] = {}
        for seq, kind in self.db.execute(
            "SELECT seq, refused FROM offline_log WHERE refused IS NOT NULL ORDER BY seq"
        ):
            out.setdefault(str(kind), []).append(int(seq))
        return out

    def log(self) -> list[LogRecord]:
        rows = self.db.execute(
            "SELECT seq, prev_hash, hash, record FROM offline_log ORDER BY seq"
        ).fetchall()
        return [LogRecord(int(r[0]), r[1], r[2], orjson.loads(r[3])) for r in rows]


# --- in a transaction (also used by StateDir.apply_device_message) ------------------------


def save_key(db: sqlite3.Connection, key_version: int, material: Any, reason: str) -> bool:
    """Keep a newer key version; an older or known one changes nothing."""
    (newest,) = db.execute("SELECT coalesce(max(key_version), 0) FROM device_keys").fetchone()
    if key_version <= newest:
        return False
    db.execute(
        "INSERT INTO device_keys (key_version, key_material, reason, received_at) "
        "VALUES (?, ?, ?, ?)",
        (key_version, orjson.dumps(material).decode(), reason, iso(datetime.now(UTC))),
    )
    return True


def apply_key_update(db: sqlite3.Connection, update: KeyUpdate) -> bool:
    material = {"key_version": update.key_version, "sealed": update.sealed}
    return save_key(db, update.key_version, material, update.reason or "rotated")


def apply_replay_ack(db: sqlite3.Connection, ack: ReplayAck) -> bool:
    """request-svc processed records first_seq..processed_through of an upload: they are
    confirmed (those it names in ``refusals``, refused) if that upload was of this log's
    own records. Every copy of a state dir reads the same device channel, so a clone reads
    the original's acknowledgements: they count only if ``batch_id`` is the id of these
    very records (``offline_batch_id`` binds the hash of the last, which chains the rest).
    An acknowledgement of an upload made before batch ids carried the chain head is taken
    by its range, as it was then."""
    if not ack_is_for_this_log(db, ack):
        return False
    now = iso(datetime.now(UTC))
    refused = {
        r.device_seq: r.kind
        for r in ack.refusals
        if ack.first_seq <= r.device_seq <= ack.processed_through
    }
    changed = db.execute(
        "UPDATE offline_log SET confirmed = 1, sent_at = coalesce(sent_at, ?) "
        "WHERE seq BETWEEN ? AND ? AND confirmed = 0",
        (now, ack.first_seq, ack.processed_through),
    ).rowcount
    for seq, kind in refused.items():
        changed += db.execute(
            "UPDATE offline_log SET refused = ? WHERE seq = ? AND refused IS NOT ?",
            (kind, seq, kind),
        ).rowcount
    return changed > 0


def ack_is_for_this_log(db: sqlite3.Connection, ack: ReplayAck) -> bool:
    row = db.execute(
        "SELECT hash FROM offline_log WHERE seq = ?", (ack.processed_through,)
    ).fetchone()
    if row is None:
        return False
    first, through = ack.first_seq, ack.processed_through
    return ack.batch_id in (
        offline_batch_id(ack.device_id, first, through, str(row[0])),
        offline_batch_id(ack.device_id, first, through),  # before chain heads
    )


def apply_lockout_lift(db: sqlite3.Connection, lift: LockoutLift) -> bool:
    lockout = read_lockout(db)
    if lockout.locked_until is None and not lockout.failures:
        return False
    write_lockout(db, after_lift(lockout))
    return True


def read_lockout(db: sqlite3.Connection) -> Lockout:
    row = db.execute(
        "SELECT failures, last_failure_at, locked_until, lockouts, cooloff_seconds "
        "FROM lockout WHERE id = 1"
    ).fetchone()
    if row is None:
        return Lockout()
    return Lockout(
        failures=int(row[0]),
        last_failure_at=parse_time(row[1], "last_failure_at") if row[1] else None,
        locked_until=parse_time(row[2], "locked_until") if row[2] else None,
        lockouts=int(row[3]),
        cooloff_seconds=float(row[4]),
    )


def write_lockout(db: sqlite3.Connection, lockout: Lockout) -> None:
    db.execute(
        "INSERT INTO lockout (id, failures, last_failure_at, locked_until, lockouts, "
        "cooloff_seconds) VALUES (1, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
        "failures = excluded.failures, last_failure_at = excluded.last_failure_at, "
        "locked_until = excluded.locked_until, lockouts = excluded.lockouts, "
        "cooloff_seconds = excluded.cooloff_seconds",
        (
            lockout.failures,
            iso(lockout.last_failure_at) if lockout.last_failure_at else None,
            iso(lockout.locked_until) if lockout.locked_until else None,
            lockout.lockouts,
            lockout.cooloff_seconds,
        ),
    )


def append_record(
    db: sqlite3.Connection,
    event_type: str,
    device_id: str,
    device_time: datetime,
    fields: Mapping[str, Any],
) -> LogRecord:
    head = db.execute("SELECT seq, hash FROM offline_log ORDER BY seq DESC LIMIT 1").fetchone()
    seq, prev = (int(head[0]) + 1, str(head[1])) if head else (1, GENESIS)
    record = new_record(
        event_type,
        device_id=device_id,
        seq=seq,
        device_time=iso(device_time),
        prev_hash=prev,
        fields=fields,
    )
    db.execute(
        "INSERT INTO offline_log (seq, prev_hash, hash, record, device_time) VALUES (?, ?, ?, ?, ?)",
        (seq, prev, record.hash, orjson.dumps(record.record).decode(), iso(device_time)),
    )
    return record
