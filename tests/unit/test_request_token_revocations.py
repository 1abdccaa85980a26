"""request-svc's store knows which revoked tokens may have NATS users: integrators', and
those whose role it never saw (revoked after an upgrade, issued before its store kept
tokens). epm_request.nats_credentials revokes their users."""

from __future__ import annotations

import sqlite3
from typing import Any

from epm_events.catalog import TokenIssued, TokenRevoked
from epm_request.nats_credentials import revoked_integrators
from epm_request.store import SCHEMA, on_token_issued, on_token_revoked

AT: Any = None  # the token handlers use nothing of where the event was stored


def issued(token_id: str, role: str) -> TokenIssued:
    return TokenIssued(
        token_id=token_id,
        name=token_id,
        role=role,  # type: ignore[arg-type]
        tenant_id="acme",
        token_hash="h" * 64,
        issued_by="test",
    )


def test_revoked_integrators_and_tokens_of_unknown_role_have_their_nats_users_revoked() -> None:
    conn = sqlite3.connect(":memory:")
    conn.executescript(SCHEMA)
    for token_id, role in [("tok-int", "integrator"), ("tok-adm", "tenant_admin")]:
        on_token_issued(conn, issued(token_id, role), AT)
    on_token_issued(conn, issued("tok-live", "integrator"), AT)
    assert revoked_integrators(conn) == []
    for token_id in ("tok-int", "tok-adm", "tok-old"):  # tok-old: issued before the table was
        on_token_revoked(conn, TokenRevoked(token_id=token_id, revoked_by="test"), AT)
    on_token_revoked(conn, TokenRevoked(token_id="tok-int", revoked_by="again"), AT)
    assert sorted(revoked_integrators(conn)) == ["tok-int", "tok-old"]
