from __future__ import annotations

import sqlite3
from pathlib import Path

from epm_events.catalog import TenantCreated
from epm_service.bus import Bus
from epm_service.projection import Applied, Projection, Projector
from epm_service.publisher import EventPublisher


class Tenants(Projection):
    name = "tenants"
    schema = "CREATE TABLE IF NOT EXISTS tenants (id TEXT PRIMARY KEY, name TEXT)"

    def handlers(self):  # type: ignore[no-untyped-def]
        return {TenantCreated: self.on_created}

    @staticmethod
    def on_created(conn: sqlite3.Connection, e: TenantCreated, _: Applied) -> None:
        conn.execute("INSERT INTO tenants VALUES (?, ?)", (e.tenant_id, e.name))


async def test_projection_applies_published_events(bus: Bus, tmp_path: Path) -> None:
    pub = EventPublisher(bus.js, "/epm/test")
    for i in range(3):
        await pub.append(
            f"t{i}", [TenantCreated(tenant_id=f"t{i}", name=f"T{i}", created_by="x")], 0
        )
    p = Projector(bus.js, Tenants(), tmp_path / "p.sqlite", service="test")
    await p.start()
    await p.wait_caught_up(5)
    rows = await p.read(lambda c: c.execute("SELECT id FROM tenants ORDER BY id").fetchall())
    await p.stop()
    assert [r[0] for r in rows] == ["t0", "t1", "t2"]
