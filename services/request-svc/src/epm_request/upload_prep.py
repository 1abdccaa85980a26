"""An offline log upload, from the bytes the device signed to the events to append: its
envelope checked, its batch validated, each record decided against what request-svc's store
holds (epm_request.offline_replay.decide) and encoded as a CloudEvent.

This is most of a replay storm's work in request-svc (about 17 µs a record: validation,
``decide`` and encoding), and it needs nothing of the event loop: so it runs in a worker
process (``EPM_REPLAY_WORKERS``, default 1; ``epm_request.replay.OfflineReplay``), on the
other core, while the event loop reads, appends and acknowledges. In and out go bytes and
tuples, cheap to pickle. With no worker it runs on the loop, the same function.

Reads see the store as committed, through a connection of the caller's (read_now's on the
loop, one of its own per store file in a worker); the replay waits for its own earlier
appends to be committed first, and the append's expected sequence refuses anything decided
against a store that was behind (docs/internal-contracts.md, "Offline log replay").
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson
from epm_events.agent import OfflineLogBatch
from epm_events.catalog import OfflineRecord
from epm_events.ids import offline_record_event_id
from epm_events.subjects import AgentSubject, event_subject
from pydantic import ValidationError

from epm_request import store
from epm_request.admission import Malformed, Refused, checked_envelope
from epm_request.offline_replay import Alert, DeviceLog, decide, redeemed_refs


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
    refusals: list[tuple[int, str]]  # (device_seq, alert kind) of the refused records


@dataclass(frozen=True, slots=True)
class UploadJob:
    subject: AgentSubject
    msg_id: str
    payload: bytes  # the upload's CloudEvent, as the device signed it
    received_at: str  # when EPM_AGENT stored it (ISO 8601): each record's ``time``
    source: str  # the CloudEvent source of the records (request-svc)
    codes_checked: bool
    """The store holds everything the stream held a moment ago: a batch that redeems codes
    may be decided (its reuse checks read what other devices redeemed). False: such a batch
    comes back with ``redeems_codes`` and nothing decided."""


@dataclass(frozen=True, slots=True)
class UploadPrepared:
    first_seq: int
    last_seq: int
    redeems_codes: bool
    prepared: Prepared | None  # None: the caller must catch up first (``codes_checked``)
    problem: tuple[str, str, str, str] | None = None
    """("malformed", reason, detail, "") or ("refused", kind, reason, tenant): exceptions
    do not cross processes faithfully, so a refusal comes back as data (``raise_problem``)."""

    def raise_problem(self, device: str) -> None:
        if self.problem is None:
            return
        what, a, b, tenant = self.problem
        if what == "malformed":
            raise Malformed(a, b)
        raise Refused(a, b, tenant, device)


def prepare_upload(job: UploadJob, conn: sqlite3.Connection) -> UploadPrepared:
    try:
        env = checked_envelope(job.payload, job.msg_id, job.subject)
        try:
            batch = OfflineLogBatch.model_validate(env.data)
        except ValidationError as exc:
            raise Malformed("invalid_data", str(exc).splitlines()[0]) from None
    except Malformed as m:
        return UploadPrepared(0, 0, False, None, ("malformed", m.reason, m.detail, ""))
    except Refused as r:
        return UploadPrepared(0, 0, False, None, ("refused", r.kind, r.reason, r.tenant))
    device = job.subject.device
    refs, code_hashes = redeemed_refs(device, batch)
    if refs and not job.codes_checked:
        return UploadPrepared(batch.first_seq, batch.last_seq, True, None)
    last, agg_seq, hashes = store.device_log_state(conn, device, batch.first_seq, batch.last_seq)
    verdict = decide(
        device,
        batch,
        DeviceLog(last, hashes),
        store.code_redemptions(conn, refs),
        store.issued_to(conn, code_hashes),
    )
    tenant = job.subject.tenant
    subject_of = {
        name: event_subject(tenant, "device", device, name)
        for name in {r.NAME for r in verdict.accepted}
    }
    records = [
        (subject_of[record.NAME], *encode_record(job, record, data))
        for record, data in zip(verdict.accepted, verdict.uploaded, strict=True)
    ]
    prepared = Prepared(
        records, agg_seq, verdict.duplicates, verdict.refused, verdict.alerts, verdict.refusals
    )
    return UploadPrepared(batch.first_seq, batch.last_seq, bool(refs), prepared)


def encode_record(job: UploadJob, record: OfflineRecord, data: dict[str, Any]) -> tuple[bytes, str]:
    """The CloudEvent of a record: ``time`` is when the server received the upload (the
    EPM_AGENT timestamp, the same on every retry), ``data.device_time`` when it happened.
    ``data`` is the record as the device signed it (validated by ``decide``) plus its hash,
    serialised once with orjson: this runs once per record of a replay storm.

    The payload is copied into a bytes object of its own size: orjson (3.12+) returns its
    working buffer, about 8 KiB for a record's 0.7 KiB, and a storm holds every record of
    every batch in flight until the stream acknowledges it (a full storm: 1.1 GB of
    request-svc's memory, most of it these buffers)."""
    msg_id = offline_record_event_id(job.subject.device, record.device_seq, record.NAME)
    envelope = {
        "specversion": "1.0",
        "id": msg_id,
        "source": job.source,
        "type": record.type_name(),
        "subject": job.subject.device,
        "time": job.received_at,
        "datacontenttype": "application/json",
        "tenant": job.subject.tenant,
        "data": data,
    }
    return bytes(memoryview(orjson.dumps(envelope))), msg_id


# --- in a worker process ----------------------------------------------------------------

_connections: dict[str, sqlite3.Connection] = {}


def prepare_in_worker(store_path: str, job: UploadJob) -> UploadPrepared:
    """``prepare_upload`` with the worker's own read connection to the store file."""
    conn = _connections.get(store_path)
    if conn is None:
        conn = _connections[store_path] = sqlite3.connect(store_path)
        conn.execute("PRAGMA busy_timeout=5000")
    return prepare_upload(job, conn)
