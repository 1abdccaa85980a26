"""approval-svc's SQLite is only a projection: deleted, it is rebuilt to the same answers."""

from __future__ import annotations

from typing import Any

from epm_approval.app import DEFINITION
from epm_approval.history import load_request
from epm_events.catalog import AppInfo, TenantCreated
from epm_service.bus import Bus
from epm_service.publisher import EventPublisher
from epm_service.runtime import RunningService, start_service
from epm_service.settings import Settings

from tests.integration.test_approval_decisions import (
    ACME_ADMIN,
    ACME_TECH,
    MSP_TECH,
    SETUP,
    TOOL,
    ask,
    auto_decide,
    open_request,
    verdicts,
)

OTHER = AppInfo(file_name="other.exe", sha256="9" * 64, publisher="Nobody")
PROBES: list[tuple[str, str, AppInfo]] = [
    ("acme", "bob", SETUP),
    ("globex", "bob", SETUP),
    ("acme", "bob", TOOL),
    ("globex", "bob", TOOL),
    ("acme", "bob", OTHER),
]


async def answers(bus: Bus) -> list[dict[str, Any]]:
    out = []
    for tenant, user, app in PROBES:
        answer = await auto_decide(bus, tenant, user, app)
        answer.pop("request_id")
        out.append(answer)
    return out


async def rules(bus: Bus) -> list[Any]:
    return [
        (await ask(bus, "list_rules", MSP_TECH, tenant="acme"))["items"],
        (await ask(bus, "list_rules", MSP_TECH))["items"],
    ]


async def test_deleted_projection_is_rebuilt_with_the_same_rules_grants_and_answers(
    bus: Bus, settings: Settings
) -> None:
    pub = EventPublisher(bus.js, "/epm/gateway")
    for tenant in ("acme", "globex"):
        await pub.append(tenant, [TenantCreated(tenant_id=tenant, name=tenant, created_by="t")], 0)
    running: RunningService = await start_service(DEFINITION, settings)
    try:
        await ask(
            bus,
            "create_rule",
            ACME_ADMIN,
            tenant="acme",
            name="setup",
            effect="allow",
            match={"sha256": SETUP.sha256},
        )
        await ask(bus, "create_rule", name="no tool", effect="deny", match={"app_name": "T?ol"})
        gone = await ask(
            bus, "create_rule", name="other", effect="allow", match={"publisher": "nobody"}
        )
        await ask(bus, "disable_rule", rule_id=gone["id"])
        for user in ("erin", "frank"):  # two one-time grants; erin's is used before the restart
            request_id, _ = await open_request(bus, user=user, app=OTHER)
            await ask(
                bus, "decide", ACME_TECH, request_id=request_id, decision="approve", scope="once"
            )
        assert (await auto_decide(bus, user="erin", app=OTHER))["status"] == "approved"
        rules_before, answers_before = await rules(bus), await answers(bus)
    finally:
        await running.stop()

    files = list(settings.data_dir.glob("approval-svc-*"))
    assert files
    for f in files:
        f.unlink()

    running = await start_service(DEFINITION, settings)
    try:
        assert running.ctx.projector("approval").caught_up
        assert await rules(bus) == rules_before
        assert await answers(bus) == answers_before
        assert (await auto_decide(bus, user="erin", app=OTHER))["status"] == "open"
        frank = await auto_decide(bus, user="frank", app=OTHER)
        assert (frank["status"], frank["decided_by"][:6]) == ("approved", "grant:")
    finally:
        await running.stop()


async def test_two_requests_racing_for_one_grant_consume_it_once(
    bus: Bus, settings: Settings
) -> None:
    running = await start_service(DEFINITION, settings)
    try:
        request_id, _ = await open_request(bus, user="gina")
        await ask(bus, "decide", ACME_TECH, request_id=request_id, decision="approve", scope="once")
        answers = await verdicts(bus, [("acme", "gina", SETUP)] * 4)
        assert sorted(a["status"] for a in answers) == ["approved", "open", "open", "open"]
    finally:
        await running.stop()


async def test_a_request_is_found_in_the_stream_before_it_is_projected(bus: Bus) -> None:
    request_id, seq = await open_request(bus, tenant="globex")
    state, last = await load_request(bus.js, request_id)  # tenant unknown: all are searched
    assert state is not None and (state.tenant, state.status, last) == ("globex", "open", seq)
    assert await load_request(bus.js, "req-unknown") == (None, 0)
