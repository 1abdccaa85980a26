"""notify-svc's projection: tenants, channels, requests (for follow-ups) and deliveries.

The deliveries table is the schedule of notifications. Its rows are derived
from events only, so a deleted file rebuilds to the same schedule:
RequestCreated and the decisions add pending rows, NotificationSent and
NotificationFailed (published by the dispatcher, read back here) close them,
NotificationChannelRemoved cancels what its channel still had pending. The
dispatcher starts once the projection has caught up, so after a rebuild it
sees as pending only what was never recorded as sent or failed.

``attempts``, ``next_at`` and ``last_error`` are the dispatcher's bookkeeping
on top (written through its own connection); a rebuild resets them, which
costs at most a few extra tries, never a lost or doubled record.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from epm_events.catalog import (
    Event,
    NotificationChannelAdded,
    NotificationChannelRemoved,
    NotificationFailed,
    NotificationSent,
    RequestCreated,
    TenantCreated,
)
from epm_service.projection import Applied, Handler, Projection
from epm_service.tenants import TenantDirectory, on_tenant_created

from epm_notify.channels import MSP_WIDE, Kind
from epm_notify.notices import (
    FOLLOW_UPS,
    CreationNotice,
    RequestSummary,
    audience_tenants,
    decided_by_rule,
    notice_of,
    notification_id,
    plan_follow_up,
    render,
)

SCHEMA = (
    TenantDirectory.schema
    + """
CREATE TABLE IF NOT EXISTS channels (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, kind TEXT NOT NULL, target TEXT NOT NULL,
    secret_ciphertext TEXT, added_by TEXT NOT NULL, added_at TEXT NOT NULL,
    removed INTEGER NOT NULL DEFAULT 0, last_seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS channels_tenant ON channels (tenant, removed);
CREATE TABLE IF NOT EXISTS requests (id TEXT PRIMARY KEY, summary TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS deliveries (
    notification_id TEXT PRIMARY KEY, channel_id TEXT NOT NULL, tenant TEXT NOT NULL,
    request_id TEXT NOT NULL, source_event_id TEXT NOT NULL, source_type TEXT NOT NULL,
    source_time REAL NOT NULL, status TEXT NOT NULL, payload BLOB,
    attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL, last_error TEXT,
    seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (status, next_at);
CREATE INDEX IF NOT EXISTS deliveries_request ON deliveries (request_id, source_type);
"""
)

CLOSED = ("sent", "failed", "cancelled", "superseded")


class NotifyStore(Projection):
    name = "store"
    schema = SCHEMA

    def __init__(self, public_url: str) -> None:
        self.public_url = public_url

    def handlers(self) -> Mapping[type[Event], Handler]:
        table: dict[type[Event], Handler] = {
            TenantCreated: on_tenant_created,
            NotificationChannelAdded: on_channel_added,
            NotificationChannelRemoved: on_channel_removed,
            RequestCreated: self.on_request_created,
            NotificationSent: on_notification_sent,
            NotificationFailed: on_notification_failed,
        }
        for cls in FOLLOW_UPS:
            table[cls] = self.on_follow_up
        return table

    # --- handlers (writer thread, inside the batch transaction) -------------------------

    def on_request_created(self, conn: sqlite3.Connection, e: RequestCreated, at: Applied) -> None:
        summary = RequestSummary.of(e, at.env.tenant)
        conn.execute(
            "INSERT OR IGNORE INTO requests (id, summary) VALUES (?, ?)",
            (e.request_id, summary.to_json()),
        )
        tenants = audience_tenants(at.env.tenant)
        rows = conn.execute(
            "SELECT id, tenant, kind FROM channels WHERE removed = 0 AND tenant IN (?, ?)"
            " ORDER BY tenant, id",
            tenants,
        ).fetchall()
        notice = notice_of(e, summary, self.public_url)
        for channel_id, tenant, kind in rows:
            plan(conn, at, e.request_id, channel_id, tenant, kind, render(kind, at.env, notice))

    def on_follow_up(self, conn: sqlite3.Connection, e: Event, at: Applied) -> None:
        request_id = e.aggregate_id
        row = conn.execute("SELECT summary FROM requests WHERE id = ?", (request_id,)).fetchone()
        if row is None:
            return  # a request from before this service kept notes: nobody was told of it
        summary = RequestSummary.from_json(row[0])
        created = conn.execute(
            "SELECT d.channel_id, d.status, d.attempts, c.tenant, c.kind, c.removed"
            " FROM deliveries d JOIN channels c ON c.id = d.channel_id"
            " WHERE d.request_id = ? AND d.source_type = ? ORDER BY d.seq, d.channel_id",
            (request_id, RequestCreated.NAME),
        ).fetchall()
        live = {r[0]: (r[3], r[4]) for r in created if not r[5]}
        decision = plan_follow_up(
            decided_by_rule(e),
            [CreationNotice(r[0], r[1], r[2]) for r in created if r[0] in live],
        )
        for channel_id in decision.withdraw:
            conn.execute(
                "UPDATE deliveries SET status = 'superseded', payload = NULL"
                " WHERE request_id = ? AND channel_id = ? AND source_type = ? AND status = 'pending'",
                (request_id, channel_id, RequestCreated.NAME),
            )
        notice = notice_of(e, summary, self.public_url)
        for channel_id in decision.notify:
            tenant, kind = live[channel_id]
            plan(conn, at, request_id, channel_id, tenant, kind, render(kind, at.env, notice))


def plan(
    conn: sqlite3.Connection,
    at: Applied,
    request_id: str,
    channel_id: str,
    tenant: str,
    kind: Kind,
    payload: bytes,
) -> None:
    source_time = at.received_at.timestamp()
    conn.execute(
        "INSERT OR IGNORE INTO deliveries (notification_id, channel_id, tenant, request_id,"
        " source_event_id, source_type, source_time, status, payload, next_at, seq)"
        " VALUES (?,?,?,?,?,?,?, 'pending', ?,?,?)",
        (
            notification_id(at.env.id, channel_id),
            channel_id,
            tenant,
            request_id,
            at.env.id,
            at.env.event_name,
            source_time,
            payload,
            source_time,
            at.seq,
        ),
    )


def on_channel_added(conn: sqlite3.Connection, e: NotificationChannelAdded, at: Applied) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO channels (id, tenant, kind, target, secret_ciphertext, added_by,"
        " added_at, last_seq) VALUES (?,?,?,?,?,?,?,?)",
        (
            e.channel_id,
            at.env.tenant,
            e.kind,
            orjson.dumps(e.target).decode(),
            e.secret_ciphertext,
            e.added_by,
            at.received_at.isoformat(),
            at.seq,
        ),
    )


def on_channel_removed(
    conn: sqlite3.Connection, e: NotificationChannelRemoved, at: Applied
) -> None:
    conn.execute(
        "UPDATE channels SET removed = 1, last_seq = ? WHERE id = ?", (at.seq, e.channel_id)
    )
    conn.execute(
        "UPDATE deliveries SET status = 'cancelled', payload = NULL"
        " WHERE channel_id = ? AND status = 'pending'",
        (e.channel_id,),
    )


def on_notification_sent(conn: sqlite3.Connection, e: NotificationSent, at: Applied) -> None:
    close(conn, at, e.notification_id, e.channel_id, "sent", e.attempt, None)


def on_notification_failed(conn: sqlite3.Connection, e: NotificationFailed, at: Applied) -> None:
    close(conn, at, e.notification_id, e.channel_id, "failed", e.attempts, e.error)


def close(
    conn: sqlite3.Connection,
    at: Applied,
    nid: str,
    channel_id: str,
    status: str,
    attempts: int,
    error: str | None,
) -> None:
    cur = conn.execute(
        "UPDATE deliveries SET status = ?, attempts = ?, last_error = ?, payload = NULL"
        " WHERE notification_id = ?",
        (status, attempts, error, nid),
    )
    if cur.rowcount == 0:  # recorded for a delivery this store never planned: keep the record
        conn.execute(
            "INSERT INTO deliveries (notification_id, channel_id, tenant, request_id,"
            " source_event_id, source_type, source_time, status, attempts, next_at, last_error,"
            " seq) VALUES (?,?,?,'','','',?,?,?,?,?,?)",
            (nid, channel_id, at.env.tenant, 0.0, status, attempts, 0.0, error, at.seq),
        )


# --- queries (reader threads) -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Channel:
    id: str
    tenant: str
    kind: Kind
    target: dict[str, Any]
    secret_ciphertext: str | None
    added_by: str
    added_at: str
    last_seq: int

    def view(self) -> dict[str, Any]:
        """The API shape: never the secret."""
        return {
            "id": self.id,
            "tenant": None if self.tenant == MSP_WIDE else self.tenant,
            "kind": self.kind,
            **self.target,
            "added_by": self.added_by,
            "added_at": self.added_at,
        }


_CHANNEL_COLUMNS = "id, tenant, kind, target, secret_ciphertext, added_by, added_at, last_seq"


def _channel(row: tuple[Any, ...]) -> Channel:
    return Channel(row[0], row[1], row[2], orjson.loads(row[3]), row[4], row[5], row[6], row[7])


def get_channel(conn: sqlite3.Connection, channel_id: str) -> Channel | None:
    row = conn.execute(
        f"SELECT {_CHANNEL_COLUMNS} FROM channels WHERE id = ? AND removed = 0", (channel_id,)
    ).fetchone()
    return None if row is None else _channel(row)


ChannelKey = tuple[str, str]
"""Where a channel stands in its list: (added_at, id)."""


def channel_key(channel: Channel) -> ChannelKey:
    """The sort key of a channel in ``list_channels`` (a page's cursor is its last one's)."""
    return (channel.added_at, channel.id)


def list_channels(
    conn: sqlite3.Connection, tenant: str, after: ChannelKey | None = None, limit: int = 100
) -> list[Channel]:
    """A page of the channels of ``tenant`` (or the MSP-wide ones), oldest first, after the
    channel whose key is ``after``."""
    where, args = "tenant = ? AND removed = 0", [tenant]
    if after is not None:
        where += " AND (added_at, id) > (?, ?)"
        args.extend(after)
    rows = conn.execute(
        f"SELECT {_CHANNEL_COLUMNS} FROM channels WHERE {where} ORDER BY added_at, id LIMIT ?",
        (*args, limit),
    ).fetchall()
    return [_channel(r) for r in rows]


@dataclass(frozen=True, slots=True)
class Due:
    """A pending delivery with what the dispatcher needs to make one try."""

    notification_id: str
    channel: Channel
    request_id: str
    source_event_id: str
    source_time: float
    payload: bytes
    attempts: int


def due_deliveries(
    conn: sqlite3.Connection, now: float, limit: int, skip_channels: frozenset[str]
) -> list[Due]:
    marks = ",".join("?" * len(skip_channels))
    skip = f" AND d.channel_id NOT IN ({marks})" if skip_channels else ""
    rows = conn.execute(
        "SELECT d.notification_id, d.request_id, d.source_event_id, d.source_time, d.payload,"
        f" d.attempts, {', '.join('c.' + c for c in _CHANNEL_COLUMNS.split(', '))}"
        " FROM deliveries d JOIN channels c ON c.id = d.channel_id"
        f" WHERE d.status = 'pending' AND d.next_at <= ? AND c.removed = 0{skip}"
        " ORDER BY d.next_at LIMIT ?",
        (now, *sorted(skip_channels), limit),
    ).fetchall()
    return [Due(r[0], _channel(r[6:]), r[1], r[2], r[3], r[4], r[5]) for r in rows]


def schedule(
    conn: sqlite3.Connection, now: float, limit: int, skip_channels: frozenset[str]
) -> tuple[list[Due], float | None]:
    """What is due now (see ``due_deliveries``) and when the next pending try falls due."""
    due = due_deliveries(conn, now, limit, skip_channels) if limit else []
    return due, next_due_at(conn)


def next_due_at(conn: sqlite3.Connection) -> float | None:
    row = conn.execute("SELECT min(next_at) FROM deliveries WHERE status = 'pending'").fetchone()
    return None if row is None or row[0] is None else float(row[0])


def delivery_counts(conn: sqlite3.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT status, count(*) FROM deliveries GROUP BY status").fetchall())


# --- the dispatcher's own writes (its connection, outside the projection's batches) --------


def record_try(
    conn: sqlite3.Connection, nid: str, attempts: int, next_at: float, error: str
) -> None:
    conn.execute(
        "UPDATE deliveries SET attempts = ?, next_at = ?, last_error = ?"
        " WHERE notification_id = ? AND status = 'pending'",
        (attempts, next_at, error, nid),
    )
    conn.commit()


def record_closed(conn: sqlite3.Connection, nid: str, status: str, attempts: int) -> None:
    """The dispatcher closes a row at once; the projection closes it again from the event."""
    conn.execute(
        "UPDATE deliveries SET status = ?, attempts = ?, payload = NULL"
        " WHERE notification_id = ? AND status = 'pending'",
        (status, attempts, nid),
    )
    conn.commit()


def now() -> float:
    return time.time()
