"""Audit projection ingest: the Projector with the audit trail, from start to the stream's end.

The events are already in EPM_EVENTS; each run starts a Projector on a fresh
SQLite file (sqlite3 in the Projector's dedicated writer thread, the only
store the projections use) and stops the clock when the checkpoint reaches
the last sequence that was in the stream at start.
"""

from __future__ import annotations

import base64
import sqlite3
import time
from pathlib import Path
from typing import Any

from epm_audit.app import NAME as AUDIT_SERVICE
from epm_audit.chain import verify_chain
from epm_audit.commands import AuditCommands
from epm_audit.trail import AuditTrail, chain_heads, chain_records
from epm_events.streams import EVENTS
from epm_service.bus import Bus
from epm_service.principal import SYSTEM
from epm_service.projection import Projection, Projector, Rejected, StoredMsg
from epm_service.publisher import MSG_ID
from epm_service.rpc import RpcServer, call

from bench.ceilings import PUBLISH_WINDOW
from bench.workload import Prepared

INGEST = "audit.ingest"
PASSTHROUGH = "projector.passthrough"
REBUILD = "audit.rebuild"
EXPORT = "audit.export"


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


async def grow_stream(bus: Bus, events: list[Prepared], total: int) -> None:
    """Append copies of ``events`` to EPM_EVENTS until it holds ``total`` events.

    A copy differs from its original by its event id (``copy<k>-<id>``, in its
    ``Nats-Msg-Id`` and its body), so every copy is a new event to the trail, and a million
    events need not all be built in memory.
    """
    js = bus.js
    have = (await js.stream_info(EVENTS.name)).state.last_seq
    copy = 0
    while have < total:
        copy += 1
        for p in events[: total - have]:
            new_id = f"copy{copy}-{p.msg_id}"
            payload = p.payload.replace(p.msg_id.encode(), new_id.encode(), 1)
            await js.publish_async(p.subject, payload, headers={MSG_ID: new_id})
            have += 1
            if have % PUBLISH_WINDOW == 0:
                await js.publish_async_completed()
    await js.publish_async_completed()


async def export_rate(bus: Bus, db: Path, expected: int) -> float:
    """records/s of a whole export of ``db`` page after page over NATS, as the gateway asks
    for it (audit-svc's export_page command, each page decoded as the gateway does)."""
    trail = Projector(bus.js, AuditTrail(), db, service="bench")  # reads only: never started
    audit = AuditCommands(trail, trail)
    server = RpcServer(bus.nc, AUDIT_SERVICE, {"export_page": audit.export_page})
    await server.start()
    try:
        records = 0
        args: dict[str, Any] = {}
        started = time.perf_counter()
        while True:
            page = await call(bus.nc, AUDIT_SERVICE, "export_page", args, SYSTEM)
            records += base64.b64decode(page["ndjson_base64"]).count(b"\n")
            if page["next_after"] is None:
                break
            args = {"after": page["next_after"], "through": page["through"]}
        elapsed = time.perf_counter() - started
    finally:
        await server.stop()
        await trail.stop()
    if records != expected:
        raise AssertionError(f"export gave {records} records, expected {expected}")
    return records / elapsed
