"""The tenant directory: a projection of TenantCreated that several services keep.

Each service keeps its own copy (it may not read another's database), built
by this one piece of code.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping

from epm_events.catalog import Event, TenantCreated

from epm_service.projection import Applied, Handler, Projection


class TenantDirectory(Projection):
    name = "tenants"
    only_handled = True
    schema = """
    CREATE TABLE IF NOT EXISTS tenants (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, created_by TEXT NOT NULL,
        created_at TEXT NOT NULL, seq INTEGER NOT NULL
    );
    """

    def handlers(self) -> Mapping[type[Event], Handler]:
        return {TenantCreated: on_tenant_created}


def on_tenant_created(conn: sqlite3.Connection, e: TenantCreated, at: Applied) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO tenants (id, name, created_by, created_at, seq) VALUES (?,?,?,?,?)",
        (e.tenant_id, e.name, e.created_by, at.received_at.isoformat(), at.seq),
    )


def tenant_exists(conn: sqlite3.Connection, tenant: str) -> bool:
    return conn.execute("SELECT 1 FROM tenants WHERE id = ?", (tenant,)).fetchone() is not None
