"""The gateway's read model: tenants and tokens, projected from EPM_EVENTS.

Like every SQLite file in EPM it is disposable: delete it and it is rebuilt
from the stream. Tokens are kept only as their SHA-256 hashes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from epm_events.catalog import Event, TenantCreated, TokenIssued, TokenRevoked
from epm_events.streams import EVENTS
from epm_service.principal import Principal, Role
from epm_service.projection import Applied, Handler, Projection, Projector
from epm_service.tenants import TenantDirectory, on_tenant_created
from nats.js import JetStreamContext

from epm_gateway.domain import hashes_match


class Directory(Projection):
    name = "directory"
    only_handled = True
    schema = (
        TenantDirectory.schema
        + """
    CREATE TABLE IF NOT EXISTS tokens (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL, tenant TEXT,
        hash TEXT NOT NULL, issued_by TEXT NOT NULL, issued_at TEXT NOT NULL,
        revoked INTEGER NOT NULL DEFAULT 0, last_seq INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS tokens_by_hash ON tokens (hash);
    """
    )

    def handlers(self) -> Mapping[type[Event], Handler]:
        return {
            TenantCreated: on_tenant_created,
            TokenIssued: on_token_issued,
            TokenRevoked: on_token_revoked,
        }


def on_token_issued(conn: sqlite3.Connection, e: TokenIssued, at: Applied) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO tokens (id, name, role, tenant, hash, issued_by, issued_at, last_seq)"
        " VALUES (?,?,?,?,?,?,?,?)",
        (
            e.token_id,
            e.name,
            e.role,
            e.tenant_id,
            e.token_hash,
            e.issued_by,
            at.received_at.isoformat(),
            at.seq,
        ),
    )


def on_token_revoked(conn: sqlite3.Connection, e: TokenRevoked, at: Applied) -> None:
    conn.execute("UPDATE tokens SET revoked = 1, last_seq = ? WHERE id = ?", (at.seq, e.token_id))


# --- queries (run through Projector.read) -----------------------------------

T = TypeVar("T")


async def read_caught_up(
    projector: Projector, js: JetStreamContext, query: Callable[[sqlite3.Connection], T | None]
) -> T | None:
    """Query; on a miss, first let the projection reach the stream's end and ask again.

    So a replica that has not yet applied another replica's write (a token just
    issued, a tenant just created) answers as that replica would.
    """
    found = await projector.read(query)
    if found is None:
        info = await js.stream_info(EVENTS.name)
        # Ask again even if the projection is there already: it may have applied the
        # write between the first query and the stream's answer.
        if await projector.wait_for(info.state.last_seq, timeout=5):
            found = await projector.read(query)
    return found


@dataclass(frozen=True, slots=True)
class TokenRecord:
    id: str
    name: str
    role: Role
    tenant: str | None
    hash: str
    revoked: bool
    last_seq: int

    def principal(self) -> Principal:
        return Principal(token_id=self.id, name=self.name, role=self.role, tenant=self.tenant)


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    name: str


_TOKEN_COLUMNS = "id, name, role, tenant, hash, revoked, last_seq"


def _token(row: tuple[object, ...]) -> TokenRecord:
    id_, name, role, tenant, hash_, revoked, last_seq = row
    return TokenRecord(
        id=str(id_),
        name=str(name),
        role=role,  # type: ignore[arg-type]
        tenant=None if tenant is None else str(tenant),
        hash=str(hash_),
        revoked=bool(revoked),
        last_seq=int(last_seq),  # type: ignore[call-overload]
    )


def principal_by_hash(conn: sqlite3.Connection, token_hash: str) -> Principal | None:
    """The principal a live token stands for, or None (unknown or revoked)."""
    row = conn.execute(
        f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE hash = ?", (token_hash,)
    ).fetchone()
    if row is None:
        return None
    token = _token(row)
    if token.revoked or not hashes_match(token.hash, token_hash):
        return None
    return token.principal()


def token_by_id(conn: sqlite3.Connection, token_id: str) -> TokenRecord | None:
    row = conn.execute(f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE id = ?", (token_id,)).fetchone()
    return None if row is None else _token(row)


def tenant_by_id(conn: sqlite3.Connection, tenant: str) -> Tenant | None:
    row = conn.execute("SELECT id, name FROM tenants WHERE id = ?", (tenant,)).fetchone()
    return None if row is None else Tenant(id=row[0], name=row[1])


def list_tenants(
    conn: sqlite3.Connection, *, after: str, limit: int, only: str | None
) -> list[Tenant]:
    """Tenants ordered by id, strictly after ``after``; ``only`` limits to one tenant."""
    if only is not None:
        sql, args = "SELECT id, name FROM tenants WHERE id = ? AND id > ?", (only, after)
        rows = conn.execute(sql, args).fetchall()
    else:
        rows = conn.execute(
            "SELECT id, name FROM tenants WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
        ).fetchall()
    return [Tenant(id=r[0], name=r[1]) for r in rows]
