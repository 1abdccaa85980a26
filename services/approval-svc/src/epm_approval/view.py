"""approval-svc's read model: requests, rules and one-time grants, in one SQLite file.

One projection (one transaction per batch) rather than three, because a grant
is born from an ``Approved`` that names only the request: the grant handler
reads the request's user and SHA-256 from the ``requests`` table in the same
transaction. Every query below runs on a read connection (``Projector.read``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import orjson
from epm_domain.request import Decision, Request, decision_of, evolve, status_after
from epm_events.catalog import (
    Approved,
    Denied,
    Event,
    GrantConsumed,
    RequestCreated,
    RequestExpired,
    RuleCreated,
    RuleDisabled,
    RuleMatch,
    RuleProposed,
)
from epm_events.ids import GLOBAL_TENANT
from epm_service.projection import Applied, Handler, Projection, StoredMsg
from pydantic import TypeAdapter

from epm_approval.rules import Rule

_REQUEST = TypeAdapter(Request)
_DECISION = TypeAdapter(Decision)
_TIME = TypeAdapter(datetime)


class ApprovalView(Projection):
    name = "approval"
    watched = frozenset({RuleCreated.NAME, RuleDisabled.NAME})  # RuleBook reloads on these
    schema = """
    CREATE TABLE IF NOT EXISTS requests (
        id TEXT PRIMARY KEY, tenant TEXT NOT NULL, state TEXT NOT NULL, last_seq INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS rules (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, tenant TEXT NOT NULL, scope TEXT NOT NULL,
        effect TEXT NOT NULL, match TEXT NOT NULL, enabled INTEGER NOT NULL,
        created_by TEXT NOT NULL, source_request_id TEXT,
        created_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS rules_by_tenant ON rules (tenant, created_seq);
    CREATE INDEX IF NOT EXISTS rules_by_change ON rules (last_seq);
    CREATE TABLE IF NOT EXISTS grants (
        id TEXT PRIMARY KEY, tenant TEXT NOT NULL, user TEXT NOT NULL, sha256 TEXT NOT NULL,
        used INTEGER NOT NULL DEFAULT 0, consumed_by TEXT,
        created_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX IF NOT EXISTS grants_unused ON grants (tenant, user, sha256, used);
    CREATE TABLE IF NOT EXISTS rules_owed (
        rule_id TEXT PRIMARY KEY, request_id TEXT NOT NULL, tenant TEXT NOT NULL,
        effect TEXT NOT NULL, decided_by TEXT NOT NULL, decision_event_id TEXT NOT NULL
    );
    -- a proposed rule's name and match as the technician left them (RuleProposed), until
    -- the rule exists; an owed rule without one (decided before RuleProposed existed)
    -- is created from the request's draft
    CREATE TABLE IF NOT EXISTS rules_proposed (
        rule_id TEXT PRIMARY KEY, name TEXT NOT NULL, match TEXT NOT NULL
    );
    """

    def handlers(self) -> Mapping[type[Event], Handler]:
        return {
            RequestCreated: on_request_event,
            Approved: on_approved,
            Denied: on_denied,
            RequestExpired: on_request_event,
            RuleCreated: on_rule_created,
            RuleProposed: on_rule_proposed,
            RuleDisabled: on_rule_disabled,
            GrantConsumed: on_grant_consumed,
        }


# --- what an automatic decision reads ----------------------------------------------

_DECIDING = frozenset({RuleCreated.NAME, RuleDisabled.NAME, GrantConsumed.NAME})
_NO_GRANT = b'"grant_id":null'


def affects_auto_decision(m: StoredMsg) -> bool:
    """Whether an event changes what a decision at once reads (rules and unused grants): a rule
    created or disabled, a grant consumed, or a once-approval, which issues a grant. The
    request events of other requests (most of the stream) do not."""
    name = m.subject[m.subject.rfind(".") + 1 :]
    if name in _DECIDING:
        return True
    # Only a once-approval names a grant; every other one carries ``"grant_id":null`` as
    # orjson writes it, a sequence no JSON string holds unescaped. Looked for in the bytes,
    # not parsed: a decision at once checks every event its view still gathers, most of them
    # other requests' decisions (a parse each was a twelfth of approval-svc's CPU per
    # request). Anything else (a grant, JSON spaced otherwise) says True: a wait, never a
    # wrong answer.
    return name == Approved.NAME and _NO_GRANT not in m.data


# --- requests -----------------------------------------------------------------


def on_request_event(conn: sqlite3.Connection, e: Event, at: Applied) -> None:
    """A request's events, each written by SQL alone where it can be: a new request is
    inserted, a decision or an expiry sets its fields in the stored JSON (``json_set``),
    without the request read back, parsed, evolved and written whole. Anything else takes
    the general way."""
    if isinstance(e, RequestCreated):
        r = evolve(None, e, at.env.tenant, at.received_at)
        if conn.execute(
            "INSERT INTO requests (id, tenant, state, last_seq) VALUES (?,?,?,?)"
            " ON CONFLICT (id) DO NOTHING",
            (r.id, r.tenant, _REQUEST.dump_json(r).decode(), at.seq),
        ).rowcount:
            return
    elif isinstance(e, Approved | Denied):
        conn.execute(
            "UPDATE requests SET last_seq = ?,"
            " state = json_set(state, '$.status', ?, '$.decision', json(?)) WHERE id = ?",
            (
                at.seq,
                status_after(e),
                _DECISION.dump_json(decision_of(e, at.received_at)).decode(),
                e.request_id,
            ),
        )
        return
    elif isinstance(e, RequestExpired):
        conn.execute(
            "UPDATE requests SET last_seq = ?,"
            " state = json_set(state, '$.status', 'expired', '$.expired_at', json(?))"
            " WHERE id = ?",
            (at.seq, _TIME.dump_json(at.received_at).decode(), e.request_id),
        )
        return
    # The general way (a request created again under its id): read back, evolved, written.
    found = find_request(conn, e.aggregate_id)
    state = evolve(found[0] if found else None, e, at.env.tenant, at.received_at)
    conn.execute(
        "INSERT INTO requests (id, tenant, state, last_seq) VALUES (?,?,?,?) "
        "ON CONFLICT (id) DO UPDATE SET state = excluded.state, last_seq = excluded.last_seq",
        (state.id, state.tenant, _REQUEST.dump_json(state).decode(), at.seq),
    )


def on_approved(conn: sqlite3.Connection, e: Approved, at: Applied) -> None:
    on_request_event(conn, e, at)
    owe_rule(conn, e, at)
    if e.grant_id is None:
        return
    conn.execute(
        "INSERT OR IGNORE INTO grants (id, tenant, user, sha256, created_seq)"
        " SELECT ?, tenant, json_extract(state, '$.user'), json_extract(state, '$.app.sha256'), ?"
        " FROM requests WHERE id = ?",
        (e.grant_id, at.seq, e.request_id),
    )


def on_denied(conn: sqlite3.Connection, e: Denied, at: Applied) -> None:
    on_request_event(conn, e, at)
    owe_rule(conn, e, at)


def owe_rule(conn: sqlite3.Connection, e: Approved | Denied, at: Applied) -> None:
    """A technician's tenant/global decision names the rule appended right after it; until
    that RuleCreated arrives the rule is owed (epm_approval.owed_rules)."""
    if e.by.kind != "technician" or e.rule_id is None or e.scope == "once":
        return
    conn.execute(
        "INSERT OR IGNORE INTO rules_owed (rule_id, request_id, tenant, effect, decided_by,"
        " decision_event_id) SELECT ?,?,?,?,?,? WHERE NOT EXISTS"
        " (SELECT 1 FROM rules WHERE id = ?)",
        (
            e.rule_id,
            e.request_id,
            GLOBAL_TENANT if e.scope == "global" else at.env.tenant,
            "allow" if isinstance(e, Approved) else "deny",
            e.by.id,
            at.env.id,
            e.rule_id,
        ),
    )


def on_rule_proposed(conn: sqlite3.Connection, e: RuleProposed, at: Applied) -> None:
    """Kept until the rule is created (``on_rule_created`` removes it); a proposal whose
    decision lost (another decided first) stays behind, unused and small."""
    conn.execute(
        "INSERT OR IGNORE INTO rules_proposed (rule_id, name, match)"
        " SELECT ?,?,? WHERE NOT EXISTS (SELECT 1 FROM rules WHERE id = ?)",
        (
            e.rule_id,
            e.name,
            match_json(e.match),
            e.rule_id,
        ),
    )


@dataclass(frozen=True, slots=True)
class OwedRule:
    rule_id: str
    request_id: str
    tenant: str
    effect: Literal["allow", "deny"]
    decided_by: str
    decision_event_id: str
    name: str | None = None
    """As the technician left it (RuleProposed); None for decisions recorded before it."""
    match: RuleMatch | None = None


def owed_rules(conn: sqlite3.Connection) -> list[OwedRule]:
    rows = conn.execute(
        "SELECT o.rule_id, o.request_id, o.tenant, o.effect, o.decided_by,"
        " o.decision_event_id, s.name, s.match"
        " FROM rules_owed o LEFT JOIN rules_proposed s ON s.rule_id = o.rule_id"
        " ORDER BY o.rowid"
    ).fetchall()
    return [OwedRule(*row[:7], match_of(row[7]) if row[7] else None) for row in rows]


def find_request(conn: sqlite3.Connection, request_id: str) -> tuple[Request, int] | None:
    """The request and the stream sequence of its last event, as far as applied."""
    row = conn.execute(
        "SELECT state, last_seq FROM requests WHERE id = ?", (request_id,)
    ).fetchone()
    if row is None:
        return None
    return _REQUEST.validate_json(row[0]), int(row[1])


# --- rules --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RuleRow:
    rule: Rule
    created_by: str
    source_request_id: str | None
    created_seq: int
    last_seq: int

    def to_api(self) -> dict[str, Any]:
        """The rule shape of API.md."""
        r = self.rule
        out: dict[str, Any] = {
            "id": r.id,
            "name": r.name,
            "scope": r.scope,
            "effect": r.effect,
            "match": r.match.model_dump(exclude_none=True),
            "enabled": r.enabled,
            "created_by": self.created_by,
            "source_request_id": self.source_request_id,
        }
        if r.tenant != GLOBAL_TENANT:
            out["tenant"] = r.tenant
        return out


def match_json(match: RuleMatch) -> str:
    """How a rule's match is stored (rules, rules_proposed): the fields it sets."""
    return orjson.dumps(match.model_dump(mode="json", exclude_none=True)).decode()


def match_of(stored: str) -> RuleMatch:
    return RuleMatch.model_validate_json(stored)


_RULE_COLUMNS = (
    "id, name, tenant, effect, match, enabled, created_by, source_request_id, created_seq, last_seq"
)


def _rule_row(row: tuple[Any, ...]) -> RuleRow:
    rid, name, tenant, effect, match, enabled, created_by, source, created_seq, last_seq = row
    rule = Rule(
        id=rid,
        name=name,
        tenant=tenant,
        effect=effect,
        match=match_of(match),
        enabled=bool(enabled),
    )
    return RuleRow(rule, created_by, source, int(created_seq), int(last_seq))


def on_rule_created(conn: sqlite3.Connection, e: RuleCreated, at: Applied) -> None:
    conn.execute("DELETE FROM rules_owed WHERE rule_id = ?", (e.rule_id,))
    conn.execute("DELETE FROM rules_proposed WHERE rule_id = ?", (e.rule_id,))
    conn.execute(
        f"INSERT OR IGNORE INTO rules ({_RULE_COLUMNS}, scope) VALUES (?,?,?,?,?,1,?,?,?,?,?)",
        (
            e.rule_id,
            e.name,
            at.env.tenant,
            e.effect,
            match_json(e.match),
            e.created_by,
            e.source_request_id,
            at.seq,
            at.seq,
            e.scope,
        ),
    )


def on_rule_disabled(conn: sqlite3.Connection, e: RuleDisabled, at: Applied) -> None:
    conn.execute("UPDATE rules SET enabled = 0, last_seq = ? WHERE id = ?", (at.seq, e.rule_id))


def find_rule(conn: sqlite3.Connection, rule_id: str) -> RuleRow | None:
    row = conn.execute(f"SELECT {_RULE_COLUMNS} FROM rules WHERE id = ?", (rule_id,)).fetchone()
    return _rule_row(row) if row else None


def list_rules(
    conn: sqlite3.Connection, tenant: str, after: int, limit: int
) -> tuple[list[RuleRow], int | None]:
    """A page of a tenant's (or ``_global``'s) rules in creation order, and the next cursor."""
    rows = conn.execute(
        f"SELECT {_RULE_COLUMNS} FROM rules WHERE tenant = ? AND created_seq > ? "
        "ORDER BY created_seq LIMIT ?",
        (tenant, after, limit + 1),
    ).fetchall()
    page = [_rule_row(r) for r in rows[:limit]]
    return page, (page[-1].created_seq if len(rows) > limit else None)


def rules_changed_after(conn: sqlite3.Connection, seq: int) -> list[RuleRow]:
    """Rules created or disabled after stream sequence ``seq``, oldest change first."""
    rows = conn.execute(
        f"SELECT {_RULE_COLUMNS} FROM rules WHERE last_seq > ? ORDER BY last_seq", (seq,)
    ).fetchall()
    return [_rule_row(r) for r in rows]


# --- grants -------------------------------------------------------------------


def on_grant_consumed(conn: sqlite3.Connection, e: GrantConsumed, at: Applied) -> None:
    conn.execute(
        "INSERT INTO grants (id, tenant, user, sha256, used, consumed_by, created_seq, last_seq) "
        "VALUES (?,?,?,?,1,?,?,?) ON CONFLICT (id) DO UPDATE SET "
        "used = 1, consumed_by = excluded.consumed_by, last_seq = excluded.last_seq",
        (e.grant_id, at.env.tenant, e.user, e.sha256, e.request_id, at.seq, at.seq),
    )


@dataclass(frozen=True, slots=True)
class Grant:
    id: str
    tenant: str
    user: str
    sha256: str
    last_seq: int  # of the grant aggregate: 0 while unused
    consumed_by: str | None = None


def usable_grants(
    conn: sqlite3.Connection, tenant: str, user: str, sha256: str, request_id: str
) -> list[Grant]:
    """One-time grants for this user and binary that this request may use, oldest first:
    unused ones, and one this very request consumed already (another approval-svc replica
    reacting to the same request)."""
    rows = conn.execute(
        "SELECT id, tenant, user, sha256, last_seq, consumed_by FROM grants "
        "WHERE tenant = ? AND user = ? AND sha256 = ? AND (used = 0 OR consumed_by = ?) "
        "ORDER BY consumed_by IS NULL, created_seq",
        (tenant, user, sha256, request_id),
    ).fetchall()
    return [Grant(*r) for r in rows]
