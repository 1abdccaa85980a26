"""Uploading the offline log: records in signed batches. Pure (no I/O but the signature).

A batch is ``OfflineLogBatch`` (epm_events.agent): consecutive records with the hash each
chains from, ``chain_head`` (the last one's hash) and first/last sequence, signed ONCE by
the device key. Its ``Nats-Msg-Id`` depends on (device, first seq, last seq, chain head),
so a batch re-sent after a crash or a lost connection is dropped by the stream's duplicate
window, and request-svc accepts each (device, sequence) once whenever it comes; while a
batch of the same range with other records (a cloned or restored state dir) has another
id, reaches request-svc and is refused there as a fork (log_fork), with an alert.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime

from epm_events.agent import MAX_BATCH_BYTES, MAX_BATCH_RECORDS, OfflineLogBatch
from epm_events.ids import offline_batch_id

from epm_agent.device_key import DeviceKey
from epm_agent.elevation import SignedMessage, signed_data
from epm_agent.offline_log import LogRecord, canonical

ENTRY_OVERHEAD = 200  # hashes, keys and quotes around the record in the batch JSON


def chunks(
    records: Sequence[LogRecord],
    max_records: int = MAX_BATCH_RECORDS,
    max_bytes: int = MAX_BATCH_BYTES,
) -> Iterator[list[LogRecord]]:
    """Consecutive records, at most ``max_records`` and about ``max_bytes`` per batch (a
    single record larger than that still goes, alone). A break in the sequence (records
    the server confirmed already between two unsent ones) starts a new batch."""
    batch: list[LogRecord] = []
    size = 0
    for record in records:
        cost = len(canonical(record.record)) + ENTRY_OVERHEAD
        if batch and (
            len(batch) >= max_records or size + cost > max_bytes or record.seq != batch[-1].seq + 1
        ):
            yield batch
            batch, size = [], 0
        batch.append(record)
        size += cost
    if batch:
        yield batch


def batch_message(
    key: DeviceKey,
    *,
    tenant: str,
    device_id: str,
    records: Sequence[LogRecord],
    time: datetime | None = None,
) -> SignedMessage:
    """The signed upload of these consecutive records. The body is built as plain data
    (a replay storm builds thousands of these); ``OfflineLogBatch`` is its schema."""
    first, last = records[0], records[-1]
    data = {
        "first_seq": first.seq,
        "last_seq": last.seq,
        "chain_head": last.hash,
        "records": [
            {
                "type": r.type,
                "data": r.record["data"],
                "prev_hash": r.prev_hash,
                "record_hash": r.hash,
            }
            for r in records
        ],
    }
    return signed_data(
        key,
        tenant=tenant,
        device_id=device_id,
        name=OfflineLogBatch.NAME,
        version=OfflineLogBatch.VERSION,
        data=data,
        msg_id=offline_batch_id(device_id, first.seq, last.seq, last.hash),
        time=time,
    )
