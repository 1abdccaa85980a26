"""The offline log's hash chain: ONE definition, used by the agent that writes the log and
by request-svc that verifies it on replay. Pure.

    record_hash = SHA-256(bytes.fromhex(prev_hash) || canonical(record))   (hex)
    prev_hash   = the previous record's record_hash; GENESIS for device_seq 1
    record      = {"type": <event name>, "data": {<the event's fields, without record_hash>}}
    canonical   = JSON, keys sorted, no whitespace, UTF-8 (records hold strings, integers
                  and objects only, so this is also RFC 8785)
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson
from epm_events.catalog import (
    AdminSessionEnded,
    AdminSessionStarted,
    ElevationPerformed,
    OfflineCodeRedeemed,
    OfflineRecord,
)

GENESIS = "0" * 64

RECORD_EVENTS: dict[str, type[OfflineRecord]] = {
    e.NAME: e
    for e in (OfflineCodeRedeemed, ElevationPerformed, AdminSessionStarted, AdminSessionEnded)
}
"""The catalog events an offline log record can be, by name."""


def canonical(record: Mapping[str, Any]) -> bytes:
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


def record_hash(prev_hash: str, record: Mapping[str, Any]) -> str:
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical(record)).hexdigest()
