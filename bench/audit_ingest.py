"""Audit projection ingest: the Projector with the audit trail, from start to the stream's end.

The events are already in EPM_EVENTS; each run starts a Projector on a fresh
SQLite file (sqlite3 in the Projector's dedicated writer thread, the only
store the projections use) and stops the clock when the checkpoint reaches
the last sequence that was in the stream at start.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from epm_audit.chain import verify_chain
from epm_audit.trail import AuditTrail, chain_heads, chain_records
from epm_service.bus import Bus
from epm_service.projection import Projection, Projector, Rejected, StoredMsg

INGEST = "audit.ingest"
PASSTHROUGH = "projector.passthrough"


class Passthrough(Projection):
    """Writes nothing: what the Projector itself costs (consumer, buffer, batches, checkpoint)."""

    name = "passthrough"
    max_batch = AuditTrail.max_batch

    def apply_batch(self, conn: sqlite3.Connection, msgs: list[StoredMsg]) -> list[Rejected]:
        return []


async def passthrough(bus: Bus, db: Path, expected: int) -> float:
    """msg/s of the Projector with a projection that writes nothing (checkpoints only)."""
    projector = Projector(bus.js, Passthrough(), db, service="bench")
    started = time.perf_counter()
    await projector.start()
    await projector.wait_caught_up(timeout=600)
    elapsed = time.perf_counter() - started
    await projector.stop()
    return expected / elapsed


async def audit_ingest(bus: Bus, db: Path, expected: int) -> float:
    """msg/s of one full ingest into ``db`` (which must not exist)."""
    projector = Projector(bus.js, AuditTrail(), db, service="bench")
    started = time.perf_counter()
    await projector.start()
    await projector.wait_caught_up(timeout=600)
    elapsed = time.perf_counter() - started
    await projector.stop()
    check(db, expected)
    return expected / elapsed


def check(db: Path, expected: int) -> None:
    """A fast run that loses or doubles events proves nothing: count them, verify a chain."""
    conn = sqlite3.connect(db)
    try:
        (rows,) = conn.execute("SELECT count(*) FROM audit_records").fetchone()
        if rows != expected:
            raise AssertionError(f"audit trail has {rows} records, expected {expected}")
        heads = chain_heads(conn)
        if sum(h.records for h in heads.values()) != expected:
            raise AssertionError("chain heads do not add up to the records")
        tenant = min(heads)
        verdict = verify_chain(chain_records(conn, tenant))
        if not verdict.ok or verdict.head != heads[tenant].hash:
            raise AssertionError(f"chain of {tenant} does not verify: {verdict}")
    finally:
        conn.close()
