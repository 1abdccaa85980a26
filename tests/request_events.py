"""One request's events as a projection's consumer receives them, for the tests of how the
services' stores write a request (tests/unit/test_*_decisions.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from epm_domain.request import Request, create, evolve
from epm_events.catalog import Actor, AppInfo, Approved, Denied, Event, RequestExpired
from epm_events.codec import encode
from epm_events.envelope import new_envelope, subject_of
from epm_service.projection import StoredMsg

NOW = datetime(2026, 1, 5, 9, tzinfo=UTC)
STORED_AT_NS = 1_700_000_000_123_456_000
STORED_AT = datetime.fromtimestamp(STORED_AT_NS / 1e9, UTC)
APP = AppInfo(file_name="tool.exe", sha256="ab" * 32, publisher='Ünïcode "Ltd"')
CREATED = create(
    request_id="req-1",
    device_id="dev-1",
    user="ann",
    app=APP,
    reason='needs "quotes" and ünïcode',
    now=NOW,
    ttl=timedelta(days=4),
)
ENDINGS: list[Event] = [
    Approved(request_id="req-1", scope="tenant", by=Actor(kind="rule", id="r-1"), rule_id="r-1"),
    Approved(
        request_id="req-1",
        scope="once",
        by=Actor(kind="technician", id="tom"),
        grant_id="req-1",
        reason="just this once",
    ),
    Denied(request_id="req-1", scope="global", by=Actor(kind="technician", id="tom"), reason="no"),
    RequestExpired(request_id="req-1"),
]


def ending_id(e: Event) -> str:
    return f"{e.NAME}-{getattr(e, 'scope', '')}"


def stored(seq: int, event: Event, at_ns: int = STORED_AT_NS) -> StoredMsg:
    env = new_envelope(event, tenant="acme", source="/epm/test")
    return StoredMsg(seq, subject_of(env), encode(env), env.id, at_ns)


def evolved(*events: Event) -> Request:
    """The request the domain makes of these events, each stored at ``STORED_AT``."""
    state: Request | None = None
    for e in events:
        state = evolve(state, e, "acme", STORED_AT)
    assert state is not None
    return state
