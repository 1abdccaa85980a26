"""The audit trail on a real nats-server: per-tenant chains, rebuild, exactly once, append-only."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import time
from pathlib import Path

import pytest
from epm_audit.chain import verify_chain
from epm_audit.trail import AuditTrail, chain_heads, chain_records
from epm_events.catalog import Actor, Approved, RuleCreated, RuleMatch, TenantCreated
from epm_events.codec import encode
from epm_events.envelope import Envelope, subject_of
from epm_events.ids import GLOBAL_TENANT
from epm_events.streams import EVENTS
from epm_service.bus import Bus
from epm_service.projection import Projector
from epm_service.publisher import MSG_ID, EventPublisher
from epm_service.streams import apply_streams

TECH = Actor(kind="technician", id="tech@msp.example")


def envelopes(pub: EventPublisher) -> list[Envelope]:
    out = []
    for tenant in ("acme", "globex"):
        out.append(
            pub.envelope(TenantCreated(tenant_id=tenant, name=tenant, created_by="t"), tenant)
        )
        for i in range(3):
            approved = Approved(request_id=f"req-{tenant}-{i}", scope="once", by=TECH)
            out.append(pub.envelope(approved, tenant))
    rule = RuleCreated(
        rule_id="rule-1",
        name="Allow Zoom",
        scope="global",
        effect="allow",
        match=RuleMatch(app_name="Zoom"),
        created_by="tech@msp.example",
    )
    out.append(pub.envelope(rule, GLOBAL_TENANT))
    return out


async def project(bus: Bus, db: Path) -> None:
    p = Projector(bus.js, AuditTrail(), db, service="audit-svc")
    await p.start()
    await p.wait_caught_up(10)
    await p.stop()


def delete_database(db: Path) -> None:
    for f in db.parent.glob(f"{db.name}*"):  # with its -wal and -shm
        f.unlink()


def rows(db: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT * FROM audit_records ORDER BY seq").fetchall()


def heads(db: Path) -> dict[str, tuple[int, str]]:
    with sqlite3.connect(db) as conn:
        return {t: (h.records, h.hash) for t, h in chain_heads(conn).items()}


async def test_events_of_two_tenants_form_two_chains_that_verify(bus: Bus, tmp_path: Path) -> None:
    pub = EventPublisher(bus.js, "/epm/test")
    await pub.publish(envelopes(pub))
    db = tmp_path / "audit.sqlite"
    await project(bus, db)

    with sqlite3.connect(db) as conn:
        found = chain_heads(conn)
        assert {t: h.records for t, h in found.items()} == {"acme": 4, "globex": 4, "_global": 1}
        for tenant, head in found.items():
            verdict = verify_chain(chain_records(conn, tenant))
            assert verdict.ok, verdict
            assert (verdict.records, verdict.head) == (head.records, head.hash)
        types = [r[0] for r in conn.execute("SELECT type FROM audit_records WHERE tenant = 'acme'")]
    assert types == ["TenantCreated", "Approved", "Approved", "Approved"]


async def test_rebuild_from_the_stream_gives_identical_records_and_heads(
    bus: Bus, tmp_path: Path
) -> None:
    pub = EventPublisher(bus.js, "/epm/test")
    await pub.publish(envelopes(pub))
    db = tmp_path / "audit.sqlite"
    await project(bus, db)
    before_rows, before_heads = rows(db), heads(db)

    delete_database(db)
    await project(bus, db)

    assert rows(db) == before_rows
    assert heads(db) == before_heads
    assert len(before_rows) == 9


async def test_events_arriving_later_continue_their_chains(bus: Bus, tmp_path: Path) -> None:
    pub = EventPublisher(bus.js, "/epm/test")
    first, *later = envelopes(pub)
    await pub.publish([first])
    db = tmp_path / "audit.sqlite"
    await project(bus, db)
    await pub.publish(later)
    await project(bus, db)

    with sqlite3.connect(db) as conn:
        assert verify_chain(chain_records(conn, "acme")).records == 4
    assert rows(db) == rows(await rebuilt(bus, tmp_path))


async def rebuilt(bus: Bus, tmp_path: Path) -> Path:
    db = tmp_path / "rebuilt.sqlite"
    await project(bus, db)
    return db


async def test_same_event_id_published_after_the_duplicate_window_is_recorded_once(
    bus: Bus, tmp_path: Path
) -> None:
    short_window = dataclasses.replace(EVENTS, duplicate_window_seconds=1)
    await apply_streams(bus.js, specs=(short_window,))
    pub = EventPublisher(bus.js, "/epm/test")
    env = pub.envelope(TenantCreated(tenant_id="acme", name="Acme", created_by="t"), "acme")
    [first] = await pub.publish([env])
    deadline = time.monotonic() + 10
    while True:
        ack = await bus.js.publish(subject_of(env), encode(env), headers={MSG_ID: env.id})
        if not ack.duplicate:
            break
        assert time.monotonic() < deadline, "still a duplicate after 10s"
        await asyncio.sleep(0.1)
    later = pub.envelope(TenantCreated(tenant_id="acme2", name="Acme 2", created_by="t"), "acme")
    await pub.publish([later])
    db = tmp_path / "audit.sqlite"
    await project(bus, db)

    recorded = [(r[0], r[1]) for r in rows(db)]
    assert recorded == [(first, env.id), (ack.seq + 1, later.id)]
    with sqlite3.connect(db) as conn:
        assert verify_chain(chain_records(conn, "acme")).records == 2


@pytest.mark.parametrize(
    "statement",
    ["UPDATE audit_records SET type = 'Denied'", "DELETE FROM audit_records"],
)
async def test_audit_records_refuse_update_and_delete(
    bus: Bus, tmp_path: Path, statement: str
) -> None:
    pub = EventPublisher(bus.js, "/epm/test")
    await pub.publish(envelopes(pub))
    db = tmp_path / "audit.sqlite"
    await project(bus, db)
    before = rows(db)

    conn = sqlite3.connect(db)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute(statement)
    conn.close()
    assert rows(db) == before
