"""request-svc's projection: enrollment tokens, devices, requests and their history, and
which bearer tokens are revoked (an integrator's NATS user goes with its token).

One SQLite file, one checkpoint. Decisions reach devices through the outbox:
the handler of Approved/Denied/RequestExpired enqueues the device message in
the same transaction, and the OutboxRelay publishes it on EPM_DEVICE.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from datetime import datetime
from typing import Any, NamedTuple

import orjson
from epm_domain.offline_log import RECORD_EVENTS
from epm_domain.request import (
    REQUEST_EVENTS,
    Decision,
    Request,
    answer_of_event,
    decision_of,
    evolve,
    status_after,
)
from epm_events.catalog import (
    AppInfo,
    Approved,
    Denied,
    DeviceEnrolled,
    DeviceRevoked,
    EnrollmentTokenCreated,
    EnrollmentTokenUsed,
    Event,
    OfflineCodeIssued,
    OfflineCodeRedeemed,
    OfflineRecord,
    RequestCreated,
    RequestExpired,
    TenantCreated,
    TokenIssued,
    TokenRevoked,
)
from epm_events.ids import derived_event_id
from epm_events.subjects import device_subject
from epm_service.metrics import EVENTS_SKIPPED
from epm_service.outbox import OUTBOX_SCHEMA, enqueue
from epm_service.projection import (
    Applied,
    Handler,
    Projection,
    Rejected,
    StoredMsg,
)
from epm_service.tenants import on_tenant_created

from epm_request.enrollment import EnrollmentToken
from epm_request.offline_replay import code_refs

SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS tenants (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, created_by TEXT NOT NULL,
    created_at TEXT NOT NULL, seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS enrollment_tokens (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, token_hash TEXT NOT NULL UNIQUE,
    expires_at TEXT NOT NULL, created_by TEXT NOT NULL, used_by TEXT, last_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, hostname TEXT NOT NULL, public_key TEXT NOT NULL,
    enrollment_id TEXT NOT NULL, key_version INTEGER NOT NULL, revoked INTEGER NOT NULL DEFAULT 0,
    enrolled_at TEXT NOT NULL, last_request_id TEXT, last_seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS devices_tenant ON devices (tenant, id);
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, device_id TEXT NOT NULL, user TEXT NOT NULL,
    status TEXT NOT NULL, created_at TEXT NOT NULL, expires_at REAL NOT NULL,
    created_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL, state TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_status ON requests (status, created_seq);
CREATE INDEX IF NOT EXISTS requests_tenant ON requests (tenant, status, created_seq);
CREATE INDEX IF NOT EXISTS requests_expiry ON requests (status, expires_at);
-- replayed offline logs: what each device's log holds here (epm_request.replay)
CREATE TABLE IF NOT EXISTS device_log (
    device_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, last_seq INTEGER NOT NULL,
    last_hash TEXT NOT NULL, records INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS device_log_records (
    device_id TEXT NOT NULL, seq INTEGER NOT NULL, hash TEXT NOT NULL, type TEXT NOT NULL,
    PRIMARY KEY (device_id, seq)
) WITHOUT ROWID;
-- every offline code redemption, by what identifies the code: "<device>|<code_ref>" and
-- "hash|<code_hash>"; the first redemption is the one kept
CREATE TABLE IF NOT EXISTS redeemed_codes (
    ref TEXT PRIMARY KEY, device_id TEXT NOT NULL, seq INTEGER NOT NULL
) WITHOUT ROWID;
-- codes issued (approval-svc's OfflineCodeIssued): to whom, so a redemption elsewhere shows
CREATE TABLE IF NOT EXISTS issued_codes (
    code_hash TEXT PRIMARY KEY, device_id TEXT NOT NULL, key_version INTEGER NOT NULL,
    counter INTEGER NOT NULL
) WITHOUT ROWID;
-- bearer tokens (the gateway's TokenIssued/TokenRevoked): a revoked integrator's NATS user
-- is revoked with it (epm_request.nats_credentials). role NULL: revoked, issued before this
-- table was (an older store), so it may be an integrator's
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY, role TEXT, revoked INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS request_history (
    request_id TEXT NOT NULL, seq INTEGER NOT NULL, type TEXT NOT NULL, time TEXT NOT NULL,
    data TEXT NOT NULL, PRIMARY KEY (request_id, seq)
);
"""
    + OUTBOX_SCHEMA
)


class RequestStore(Projection):
    name = "store"
    schema = SCHEMA
    watched = frozenset({DeviceRevoked.NAME})  # the intake's device cache drops on these

    def apply_batch(self, conn: sqlite3.Connection, msgs: list[StoredMsg]) -> list[Rejected]:
        """Replayed offline records take a short way (a replay storm brings a hundred
        thousand at once): read from the JSON without the pydantic models, and written a run
        at a time, one row per device for its log head. Anything else, and a record that is
        not plainly well-formed, goes the generic way (``Projection.apply_batch``, which
        dead-letters what is wrong). Stream order holds: a run of records is written before
        the next other event and after the one before."""
        rejected: list[Rejected] = []
        others: list[StoredMsg] = []
        records: list[_Record] = []
        for m in msgs:
            record = _plain_record(m)
            if record is None:
                if records:
                    self._apply_records(conn, records)
                    records = []
                others.append(m)
            else:
                if others:
                    rejected.extend(super().apply_batch(conn, others))
                    others = []
                records.append(record)
        if records:
            self._apply_records(conn, records)
        if others:
            rejected.extend(super().apply_batch(conn, others))
        return rejected

    def _apply_records(self, conn: sqlite3.Connection, records: list[_Record]) -> None:
        """What ``on_offline_record`` does for each, for a run of records at once."""
        fresh = _new_records(conn, records)
        if len(fresh) < len(records):
            EVENTS_SKIPPED.labels(self.name).inc(len(records) - len(fresh))
        conn.executemany(
            "INSERT INTO device_log_records (device_id, seq, hash, type) VALUES (?,?,?,?)",
            [(r.device_id, r.device_seq, r.record_hash, r.type) for r in fresh],
        )
        # device -> [tenant, highest device seq, its hash, records, last stream seq]
        heads: dict[str, list[Any]] = {}
        for r in fresh:
            head = heads.get(r.device_id)
            if head is None:
                heads[r.device_id] = [r.tenant, r.device_seq, r.record_hash, 1, r.seq]
                continue
            head[3] += 1
            head[4] = r.seq
            if r.device_seq > head[1]:  # as one by one: the first record of the highest seq
                head[1], head[2] = r.device_seq, r.record_hash
        conn.executemany(
            DEVICE_LOG_UPSERT,
            [(d, t, dseq, h, n) for d, (t, dseq, h, n, _) in heads.items()],
        )
        conn.executemany(
            "UPDATE devices SET last_seq = ? WHERE id = ?",
            [(seq, d) for d, (_, _, _, _, seq) in heads.items()],
        )

    def handlers(self) -> Mapping[type[Event], Handler]:
        table: dict[type[Event], Handler] = {
            TenantCreated: on_tenant_created,
            EnrollmentTokenCreated: on_enrollment_token_created,
            EnrollmentTokenUsed: on_enrollment_token_used,
            DeviceEnrolled: on_device_enrolled,
            DeviceRevoked: on_device_revoked,
            TokenIssued: on_token_issued,
            TokenRevoked: on_token_revoked,
        }
        for cls in REQUEST_EVENTS:
            table[cls] = on_request_event
        for record in RECORD_EVENTS.values():
            table[record] = on_offline_record
        table[OfflineCodeIssued] = on_code_issued
        return table


class _Record(NamedTuple):
    seq: int
    event_id: str
    tenant: str
    type: str
    device_id: str
    device_seq: int
    record_hash: str


PLAIN_RECORDS = {
    cls.NAME: cls.type_name() for cls in RECORD_EVENTS.values() if cls is not OfflineCodeRedeemed
}
"""Offline record events the store needs nothing of but the device, sequence and hash (a
redeemed code also fills ``redeemed_codes``: it goes the generic way)."""


def _plain_record(m: StoredMsg) -> _Record | None:
    """A current-version offline record with what the store reads well-formed, else None."""
    name = m.subject[m.subject.rfind(".") + 1 :]
    type_name = PLAIN_RECORDS.get(name)
    if type_name is None:
        return None
    try:
        raw = orjson.loads(m.data)
    except orjson.JSONDecodeError:
        return None
    if type(raw) is not dict or raw.get("specversion") != "1.0" or raw.get("type") != type_name:
        return None
    event_id, tenant, data = raw.get("id"), raw.get("tenant"), raw.get("data")
    if type(event_id) is not str or type(tenant) is not str or type(data) is not dict:
        return None
    if m.msg_id is not None and m.msg_id != event_id:
        return None
    device, seq, record_hash = (
        data.get("device_id"),
        data.get("device_seq"),
        data.get("record_hash"),
    )
    if type(device) is not str or type(seq) is not int or seq < 1 or type(record_hash) is not str:
        return None
    return _Record(m.seq, event_id, tenant, name, device, seq, record_hash)


def _new_records(conn: sqlite3.Connection, records: list[_Record]) -> list[_Record]:
    """The records of a run whose (device, sequence) the store does not hold yet, in order
    (of two in the run, the first). That pair is a record's identity: its event id is
    derived from it, and the replay appends one record per pair. So the device log's own
    key is these records' idempotency record, and they take no ``_processed`` row: random
    event ids in that index cost a replay storm's store 8 µs a record, against 2.7 for the
    device log alone (bench/README.md, "Replay storm", session 7). One range lookup per
    device of the run."""
    span: dict[str, tuple[int, int]] = {}
    for r in records:
        low, high = span.get(r.device_id, (r.device_seq, r.device_seq))
        span[r.device_id] = (min(low, r.device_seq), max(high, r.device_seq))
    held: set[tuple[str, int]] = set()
    for device, (low, high) in span.items():
        held.update(
            (device, seq)
            for (seq,) in conn.execute(
                "SELECT seq FROM device_log_records WHERE device_id = ? AND seq BETWEEN ? AND ?",
                (device, low, high),
            )
        )
    fresh: list[_Record] = []
    for r in records:
        key = (r.device_id, r.device_seq)
        if key not in held:
            held.add(key)
            fresh.append(r)
    return fresh


# --- handlers (writer thread, inside the batch transaction) ---------------------


def on_enrollment_token_created(
    conn: sqlite3.Connection, e: EnrollmentTokenCreated, at: Applied
) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO enrollment_tokens (id, tenant, token_hash, expires_at, created_by,"
        " last_seq) VALUES (?,?,?,?,?,?)",
        (
            e.enrollment_id,
            at.env.tenant,
            e.token_hash,
            e.expires_at.isoformat(),
            e.created_by,
            at.seq,
        ),
    )


def on_enrollment_token_used(conn: sqlite3.Connection, e: EnrollmentTokenUsed, at: Applied) -> None:
    conn.execute(
        "UPDATE enrollment_tokens SET used_by = ?, last_seq = ? WHERE id = ?",
        (e.device_id, at.seq, e.enrollment_id),
    )


def on_device_enrolled(conn: sqlite3.Connection, e: DeviceEnrolled, at: Applied) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO devices (id, tenant, hostname, public_key, enrollment_id,"
        " key_version, enrolled_at, last_seq) VALUES (?,?,?,?,?,?,?,?)",
        (
            e.device_id,
            at.env.tenant,
            e.hostname,
            e.public_key,
            e.enrollment_id,
            e.key_version,
            at.received_at.isoformat(),
            at.seq,
        ),
    )


def on_device_revoked(conn: sqlite3.Connection, e: DeviceRevoked, at: Applied) -> None:
    conn.execute("UPDATE devices SET revoked = 1, last_seq = ? WHERE id = ?", (at.seq, e.device_id))


def on_token_issued(conn: sqlite3.Connection, e: TokenIssued, at: Applied) -> None:
    conn.execute(
        "INSERT INTO tokens (id, role) VALUES (?, ?) "
        "ON CONFLICT (id) DO UPDATE SET role = excluded.role",
        (e.token_id, e.role),
    )


def on_token_revoked(conn: sqlite3.Connection, e: TokenRevoked, at: Applied) -> None:
    conn.execute(
        "INSERT INTO tokens (id, revoked) VALUES (?, 1) ON CONFLICT (id) DO UPDATE SET revoked = 1",
        (e.token_id,),
    )


DEVICE_LOG_UPSERT = (
    "INSERT INTO device_log (device_id, tenant, last_seq, last_hash, records)"
    " VALUES (?,?,?,?,?) ON CONFLICT (device_id) DO UPDATE SET"
    " records = records + excluded.records,"
    " last_hash = CASE WHEN excluded.last_seq > last_seq THEN excluded.last_hash"
    " ELSE last_hash END, last_seq = max(last_seq, excluded.last_seq)"
)


def on_offline_record(conn: sqlite3.Connection, e: OfflineRecord, at: Applied) -> None:
    """One replayed record of a device's offline log (appended once per (device, seq)).
    ``RequestStore._apply_records`` does the same for a run of plain records."""
    inserted = conn.execute(
        "INSERT OR IGNORE INTO device_log_records (device_id, seq, hash, type) VALUES (?,?,?,?)",
        (e.device_id, e.device_seq, e.record_hash, e.NAME),
    ).rowcount
    if not inserted:  # the device's log holds this sequence already: nothing changes
        return
    conn.execute(DEVICE_LOG_UPSERT, (e.device_id, at.env.tenant, e.device_seq, e.record_hash, 1))
    conn.execute("UPDATE devices SET last_seq = ? WHERE id = ?", (at.seq, e.device_id))
    if isinstance(e, OfflineCodeRedeemed):
        for ref in code_refs(e.device_id, e):
            conn.execute(
                "INSERT OR IGNORE INTO redeemed_codes (ref, device_id, seq) VALUES (?,?,?)",
                (ref, e.device_id, e.device_seq),
            )


def on_code_issued(conn: sqlite3.Connection, e: OfflineCodeIssued, at: Applied) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO issued_codes (code_hash, device_id, key_version, counter)"
        " VALUES (?,?,?,?)",
        (e.code_hash, e.device_id, e.key_version, e.counter),
    )


def on_request_event(conn: sqlite3.Connection, e: Event, at: Applied) -> None:
    """A request's events, each written by SQL alone where it can be: a new request is
    inserted, a decision or an expiry sets its fields in the stored JSON (``json_set``),
    without the request read back, parsed, evolved and written whole (two statements and
    a parse fewer per online request). Anything else takes the general way."""
    if isinstance(e, RequestCreated):
        if not _insert_created(conn, e, at):
            _evolve_stored(conn, e, at)  # one there already: as a later event would
        return
    if isinstance(e, Approved | Denied):
        status = status_after(e)
        decision = decision_json(decision_of(e, at.received_at))
        row = conn.execute(
            "UPDATE requests SET status = ?, last_seq = ?,"
            " state = json_set(state, '$.status', ?, '$.decision', json(?)) WHERE id = ?"
            " RETURNING device_id",
            (status, at.seq, status, decision, e.request_id),
        ).fetchone()
    elif isinstance(e, RequestExpired):
        row = conn.execute(
            "UPDATE requests SET status = 'expired', last_seq = ?,"
            " state = json_set(state, '$.status', 'expired', '$.expired_at', json(?))"
            " WHERE id = ? RETURNING device_id",
            (at.seq, orjson.dumps(at.received_at), e.request_id),
        ).fetchone()
    else:
        _evolve_stored(conn, e, at)
        return
    if row is None:
        return  # a decision for a request we never saw: nothing to show
    _add_history(conn, e, at)
    enqueue(
        conn,
        device_subject(at.env.tenant, row[0], "decision"),
        orjson.dumps(answer_of_event(e).model_dump(mode="json")),
        derived_event_id(at.env.id, "DeviceDecision"),
    )


def _insert_created(conn: sqlite3.Connection, e: RequestCreated, at: Applied) -> bool:
    """The new request's row, unless one is there already (then False, nothing written)."""
    r = evolve(None, e, at.env.tenant, at.received_at)
    inserted = conn.execute(
        "INSERT INTO requests (id, tenant, device_id, user, status, created_at, expires_at,"
        " created_seq, last_seq, state) VALUES (?,?,?,?,?,?,?,?,?,?)"
        " ON CONFLICT (id) DO NOTHING",
        (
            r.id,
            r.tenant,
            r.device_id,
            r.user,
            r.status,
            r.created_at.isoformat(),
            r.expires_at.timestamp(),
            at.seq,
            at.seq,
            request_to_json(r),
        ),
    ).rowcount
    if not inserted:
        return False
    _add_history(conn, e, at)
    conn.execute("UPDATE devices SET last_request_id = ? WHERE id = ?", (r.id, r.device_id))
    return True


def _evolve_stored(conn: sqlite3.Connection, e: Event, at: Applied) -> None:
    """The general way: the stored request read back, evolved by the event and written."""
    row = conn.execute("SELECT state FROM requests WHERE id = ?", (e.aggregate_id,)).fetchone()
    if row is None:
        return  # an event for a request we never saw: nothing to show
    after = evolve(request_from_json(row[0]), e, at.env.tenant, at.received_at)
    _add_history(conn, e, at)
    conn.execute(
        "UPDATE requests SET status = ?, last_seq = ?, state = ? WHERE id = ?",
        (after.status, at.seq, request_to_json(after), after.id),
    )


def _add_history(conn: sqlite3.Connection, e: Event, at: Applied) -> None:
    conn.execute(
        "INSERT INTO request_history (request_id, seq, type, time, data) VALUES (?,?,?,?,?)"
        " ON CONFLICT DO NOTHING",
        (
            e.aggregate_id,
            at.seq,
            e.NAME,
            at.received_at.isoformat(),
            orjson.dumps(e.model_dump(mode="json")).decode(),
        ),
    )


# --- state <-> JSON -----------------------------------------------------------------


def request_to_json(r: Request) -> str:
    d = r.decision
    return orjson.dumps(
        {
            "id": r.id,
            "tenant": r.tenant,
            "device_id": r.device_id,
            "user": r.user,
            "app": r.app.model_dump(mode="json"),
            "reason": r.reason,
            "created_at": r.created_at,
            "expires_at": r.expires_at,
            "status": r.status,
            "expired_at": r.expired_at,
            "decision": None if d is None else _decision_fields(d),
        }
    ).decode()


def decision_json(d: Decision) -> str:
    """A decision as ``request_to_json`` writes it."""
    return orjson.dumps(_decision_fields(d)).decode()


def _decision_fields(d: Decision) -> dict[str, Any]:
    return {
        "decision": d.decision,
        "scope": d.scope,
        "by": d.by.model_dump(),
        "at": d.at,
        "rule_id": d.rule_id,
        "grant_id": d.grant_id,
        "reason": d.reason,
    }


def request_from_json(raw: str) -> Request:
    from epm_events.catalog import Actor

    d: dict[str, Any] = orjson.loads(raw)
    dec = d["decision"]
    return Request(
        id=d["id"],
        tenant=d["tenant"],
        device_id=d["device_id"],
        user=d["user"],
        app=AppInfo.model_validate(d["app"]),
        reason=d["reason"],
        created_at=datetime.fromisoformat(d["created_at"]),
        expires_at=datetime.fromisoformat(d["expires_at"]),
        status=d["status"],
        expired_at=datetime.fromisoformat(d["expired_at"]) if d["expired_at"] else None,
        decision=None
        if dec is None
        else Decision(
            decision=dec["decision"],
            scope=dec["scope"],
            by=Actor.model_validate(dec["by"]),
            at=datetime.fromisoformat(dec["at"]),
            rule_id=dec["rule_id"],
            grant_id=dec["grant_id"],
            reason=dec["reason"],
        ),
    )


def request_view(raw: str) -> dict[str, Any]:
    """The API.md request shape."""
    d: dict[str, Any] = orjson.loads(raw)
    out = {
        k: d[k]
        for k in (
            "id",
            "tenant",
            "device_id",
            "user",
            "status",
            "app",
            "reason",
            "created_at",
            "expires_at",
        )
    }
    dec = d["decision"]
    if dec is not None:
        out["decision"] = {
            "decision": dec["decision"],
            "scope": dec["scope"],
            "by": dec["by"]["id"],
            "by_kind": dec["by"]["kind"],
            "rule_id": dec["rule_id"],
            "at": dec["at"],
        }
    return out


# --- queries (reader threads) -------------------------------------------------------


def get_device(conn: sqlite3.Connection, device_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT id, tenant, hostname, public_key, revoked, enrolled_at, last_seq FROM devices"
        " WHERE id = ?",
        (device_id,),
    ).fetchone()
    if row is None:
        return None
    return {
        "id": row[0],
        "tenant": row[1],
        "hostname": row[2],
        "public_key": row[3],
        "revoked": bool(row[4]),
        "enrolled_at": row[5],
        "last_seq": row[6],
    }


def get_enrollment_token(conn: sqlite3.Connection, token_hash: str) -> EnrollmentToken | None:
    row = conn.execute(
        "SELECT id, tenant, expires_at, used_by, last_seq FROM enrollment_tokens"
        " WHERE token_hash = ?",
        (token_hash,),
    ).fetchone()
    if row is None:
        return None
    return EnrollmentToken(row[0], row[1], datetime.fromisoformat(row[2]), row[3], row[4])


DeviceSortKey = tuple[int, int, str, str]
"""Where a device stands in the device list: (no open request, revoked, hostname, id)."""


def device_key(device: dict[str, Any]) -> DeviceSortKey:
    """The sort key of an item of ``list_devices`` (a page's cursor is its last item's)."""
    closed = 0 if device["offline_open"] else 1
    return (closed, int(device["revoked"]), str(device["hostname"]), str(device["id"]))


def list_devices(
    conn: sqlite3.Connection,
    tenant: str,
    *,
    offline_open: bool = False,
    after: DeviceSortKey | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """A page of a tenant's devices in the help desk's order (``device_key``): devices with
    any open request first (not only when their last request is open: a later one decided
    by a rule hid an earlier open one), in each part revoked ones last, then by hostname and
    id; after the device whose key is ``after``. ``offline_open``: only devices with an open
    request."""
    where = ["d.tenant = ?"]
    args: list[str | int] = [tenant, tenant]  # the open requests' tenant, the devices'
    if offline_open:
        where.append("o.device_id IS NOT NULL")
    if after is not None:
        where.append("(o.device_id IS NULL, d.revoked, d.hostname, d.id) > (?, ?, ?, ?)")
        args.extend(after)
    rows = conn.execute(
        "SELECT d.id, d.hostname, d.revoked, d.enrolled_at, o.device_id IS NOT NULL,"
        " d.last_request_id FROM devices d LEFT JOIN (SELECT DISTINCT device_id FROM requests"
        " WHERE tenant = ? AND status = 'open') o ON o.device_id = d.id"
        f" WHERE {' AND '.join(where)}"
        " ORDER BY o.device_id IS NULL, d.revoked, d.hostname, d.id LIMIT ?",
        (*args, limit),
    ).fetchall()
    return [
        {
            "id": r[0],
            "device_id": r[0],
            "tenant": tenant,
            "hostname": r[1],
            "revoked": bool(r[2]),
            "enrolled_at": r[3],
            "offline_open": bool(r[4]),
            "last_request_id": r[5],
        }
        for r in rows
    ]


def get_request_state(conn: sqlite3.Connection, request_id: str) -> tuple[str, int] | None:
    row = conn.execute(
        "SELECT state, last_seq FROM requests WHERE id = ?", (request_id,)
    ).fetchone()
    return (row[0], row[1]) if row else None


def get_history(conn: sqlite3.Connection, request_id: str) -> list[dict[str, Any]]:
    return [
        {"seq": r[0], "type": r[1], "time": r[2], "data": orjson.loads(r[3])}
        for r in conn.execute(
            "SELECT seq, type, time, data FROM request_history WHERE request_id = ? ORDER BY seq",
            (request_id,),
        )
    ]


def list_requests(
    conn: sqlite3.Connection, tenant: str | None, status: str, after: int, limit: int
) -> list[tuple[int, str]]:
    where, args = ["created_seq > ?"], [after]
    if tenant is not None:
        where.append("tenant = ?")
        args.append(tenant)  # type: ignore[arg-type]
    if status != "all":
        where.append("status = ?")
        args.append(status)  # type: ignore[arg-type]
    rows = conn.execute(
        f"SELECT created_seq, state FROM requests WHERE {' AND '.join(where)}"
        " ORDER BY created_seq LIMIT ?",
        (*args, limit),
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def due_for_expiry(
    conn: sqlite3.Connection, now: datetime, limit: int
) -> list[tuple[str, str, int]]:
    return [
        (r[0], r[1], r[2])
        for r in conn.execute(
            "SELECT state, tenant, last_seq FROM requests WHERE status = 'open' AND expires_at <= ?"
            " ORDER BY expires_at LIMIT ?",
            (now.timestamp(), limit),
        )
    ]


def tenant_exists(conn: sqlite3.Connection, tenant: str) -> bool:
    return conn.execute("SELECT 1 FROM tenants WHERE id = ?", (tenant,)).fetchone() is not None


def device_log_state(
    conn: sqlite3.Connection, device_id: str, first_seq: int, last_seq: int
) -> tuple[int, int, dict[int, str]]:
    """(highest accepted seq, device aggregate's last stream seq, hashes of the accepted
    records in first_seq-1..last_seq) for one device: what a replay is checked against."""
    row = conn.execute("SELECT last_seq FROM device_log WHERE device_id = ?", (device_id,))
    head = row.fetchone()
    agg = conn.execute("SELECT last_seq FROM devices WHERE id = ?", (device_id,)).fetchone()
    hashes = {
        int(r[0]): str(r[1])
        for r in conn.execute(
            "SELECT seq, hash FROM device_log_records WHERE device_id = ? AND seq BETWEEN ? AND ?",
            (device_id, first_seq - 1, last_seq),
        )
    }
    return (int(head[0]) if head else 0), (int(agg[0]) if agg else 0), hashes


def code_redemptions(conn: sqlite3.Connection, refs: list[str]) -> dict[str, tuple[str, int]]:
    """The first redemption of each of these refs: ref -> (device_id, seq)."""
    if not refs:
        return {}
    marks = ",".join("?" * len(refs))
    return {
        r[0]: (r[1], int(r[2]))
        for r in conn.execute(
            f"SELECT ref, device_id, seq FROM redeemed_codes WHERE ref IN ({marks})", refs
        )
    }


def issued_to(conn: sqlite3.Connection, code_hashes: list[str]) -> dict[str, str]:
    """code_hash -> the device it was issued to, for those issued through the server."""
    if not code_hashes:
        return {}
    marks = ",".join("?" * len(code_hashes))
    return {
        r[0]: r[1]
        for r in conn.execute(
            f"SELECT code_hash, device_id FROM issued_codes WHERE code_hash IN ({marks})",
            code_hashes,
        )
    }
