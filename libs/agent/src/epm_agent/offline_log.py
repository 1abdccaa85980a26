"""The agent's offline log: what was done with offline codes, tamper-evident. Pure.

Each record is one catalog event (epm_events.catalog: OfflineCodeRedeemed,
ElevationPerformed, AdminSessionStarted, AdminSessionEnded) without its
``record_hash``, as ``{"type": <event name>, "data": {<the event's fields>}}``,
``data`` carrying ``device_id``, ``device_seq`` (1, 2, 3, ... per device, no
gaps) and ``device_time``. The hash chains the records:

    record_hash = SHA-256(bytes.fromhex(prev_hash) || canonical(record))   (hex)
    prev_hash   = the previous record's record_hash; GENESIS for device_seq 1
    canonical   = JSON, keys sorted, no whitespace, UTF-8 (records hold strings,
                  integers and objects only, so this is also RFC 8785)

Uploading (the replay issue) sends ``type`` with ``data`` + ``record_hash`` as
that event; the server recomputes the chain from the events alone and checks
the head against the batch's Ed25519 signature. The chain itself is defined once, in
``epm_domain.offline_log``, for the agent and the server alike. Editing, dropping or reordering
a record breaks every later hash.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from epm_domain.offline_log import GENESIS, RECORD_EVENTS, canonical, record_hash
from epm_events.catalog import OfflineRecord

__all__ = [
    "GENESIS",
    "RECORD_EVENTS",
    "LogRecord",
    "canonical",
    "first_break",
    "new_record",
    "record_hash",
]


@dataclass(frozen=True, slots=True)
class LogRecord:
    seq: int
    prev_hash: str
    hash: str
    record: dict[str, Any]  # {"type", "data"}

    @property
    def type(self) -> str:
        return str(self.record["type"])

    def as_event(self) -> OfflineRecord:
        """The catalog event this record uploads as (validated: the format can be replayed)."""
        return RECORD_EVENTS[self.type].model_validate(
            {**self.record["data"], "record_hash": self.hash}
        )


def new_record(
    event_type: str,
    *,
    device_id: str,
    seq: int,
    device_time: str,
    prev_hash: str,
    fields: Mapping[str, Any],
) -> LogRecord:
    """The next record of the chain; ``fields`` are the event's own fields."""
    if event_type not in RECORD_EVENTS:
        raise ValueError(f"{event_type} is not an offline record type")
    data = {**fields, "device_id": device_id, "device_seq": seq, "device_time": device_time}
    record = {"type": event_type, "data": data}
    entry = LogRecord(seq, prev_hash, record_hash(prev_hash, record), record)
    entry.as_event()  # a record that could not be uploaded is never written
    return entry


def first_break(records: Iterable[LogRecord]) -> int | None:
    """The ``seq`` of the first record that does not chain, or None if the log is intact."""
    prev, expected_seq = GENESIS, 1
    for r in records:
        if (
            r.seq != expected_seq
            or r.record.get("data", {}).get("device_seq") != r.seq
            or r.prev_hash != prev
            or record_hash(prev, r.record) != r.hash
        ):
            return r.seq
        prev, expected_seq = r.hash, r.seq + 1
    return None
