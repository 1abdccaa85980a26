"""approval-svc on a real nats-server: rules first, one-time grants, technician decisions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from epm_approval.app import DEFINITION, NAME
from epm_approval.history import Recorded, read_events
from epm_domain.request import answer_of_event
from epm_events.catalog import (
    AppInfo,
    Approved,
    Denied,
    RequestCreated,
    RequestExpired,
    TenantCreated,
)
from epm_events.codec import decode, event_of
from epm_events.ids import GLOBAL_TENANT, new_id
from epm_events.notices import Undecided
from epm_events.subjects import UNDECIDED_NOTICE, aggregate_filter, event_type_filter
from epm_service.bus import Bus
from epm_service.errors import CommandError
from epm_service.principal import Principal
from epm_service.publisher import ConcurrencyConflict, EventPublisher
from epm_service.rpc import call
from epm_service.runtime import RunningService, start_service
from epm_service.settings import Settings
from nats.aio.msg import Msg

SHA_SETUP = "5" * 64
SHA_TOOL = "7" * 64
SETUP = AppInfo(
    file_name="setup.exe",
    sha256=SHA_SETUP,
    publisher="Contoso Ltd",
    app_name="Contoso Setup",
    path=r"C:\Users\bob\Downloads\setup.exe",
)
DECIDING = (Approved.NAME, Denied.NAME)
TOOL = AppInfo(file_name="tool.exe", sha256=SHA_TOOL, publisher="Fabrikam", app_name="Tool")

ACME_TECH = Principal("tok-1", "alice", "tenant_technician", "acme")
ACME_ADMIN = Principal("tok-2", "ann", "tenant_admin", "acme")
GLOBEX_TECH = Principal("tok-3", "gus", "tenant_technician", "globex")
MSP_TECH = Principal("tok-4", "mo", "msp_technician", None)
INTEGRATOR = Principal("tok-5", "ivy", "integrator", None)


@pytest.fixture
async def approval(bus: Bus, settings: Settings) -> AsyncIterator[RunningService]:
    pub = EventPublisher(bus.js, "/epm/gateway")
    for tenant in ("acme", "globex"):
        await pub.append(tenant, [TenantCreated(tenant_id=tenant, name=tenant, created_by="t")], 0)
    running = await start_service(DEFINITION, settings)
    yield running
    await running.stop()


async def open_request(
    bus: Bus,
    tenant: str = "acme",
    user: str = "bob",
    app: AppInfo = SETUP,
    expires_in: timedelta = timedelta(days=4),
) -> tuple[str, int]:
    """What request-svc does: RequestCreated as the first event of a new request."""
    now = datetime.now(UTC)
    event = RequestCreated(
        request_id=new_id("req"),
        device_id="dev-1",
        user=user,
        app=app,
        reason="need it",
        created_at=now,
        expires_at=now + expires_in,
    )
    [done] = await EventPublisher(bus.js, "/epm/request-svc").append(tenant, [event], 0)
    return event.request_id, done.seq


async def ask(bus: Bus, command: str, principal: Principal = MSP_TECH, **args: Any) -> Any:
    return await call(bus.nc, NAME, command, args, principal)


async def refused(bus: Bus, command: str, principal: Principal, **args: Any) -> CommandError:
    with pytest.raises(CommandError) as exc:
        await ask(bus, command, principal, **args)
    return exc.value


async def auto_decide(
    bus: Bus, tenant: str = "acme", user: str = "bob", app: AppInfo = SETUP
) -> dict[str, Any]:
    """A new request and what approval-svc makes of it at once."""
    [answer] = await verdicts(bus, [(tenant, user, app)])
    return answer


async def verdicts(bus: Bus, asks: list[tuple[str, str, AppInfo]]) -> list[dict[str, Any]]:
    """What request-svc hears of new requests (epm_request.answers): approval-svc's decision
    at once (the request's next event) or its notice that nothing decides it."""
    heard: dict[str, dict[str, Any]] = {}
    changed = asyncio.Event()

    async def on_notice(msg: Msg) -> None:
        heard.setdefault(Undecided.model_validate_json(msg.data).request_id, {"status": "open"})
        changed.set()

    async def on_decision(msg: Msg) -> None:
        event = event_of(decode(msg.data))
        assert isinstance(event, Approved | Denied)
        answer = answer_of_event(event).model_dump(exclude_none=True)
        if event.by.kind == "system":
            answer["grant_id"] = event.by.id.removeprefix("grant:")
        heard.setdefault(event.request_id, answer)
        changed.set()

    subs = [
        await bus.nc.subscribe(UNDECIDED_NOTICE, cb=on_notice),
        *[await bus.nc.subscribe(event_type_filter(n), cb=on_decision) for n in DECIDING],
    ]
    try:
        await bus.nc.flush()
        ids = [(await open_request(bus, t, u, a))[0] for t, u, a in asks]
        async with asyncio.timeout(10):
            while not all(i in heard for i in ids):
                changed.clear()
                await changed.wait()
        return [{**heard[i], "request_id": i} for i in ids]
    finally:
        for sub in subs:
            await sub.unsubscribe()


async def request_events(bus: Bus, tenant: str, request_id: str) -> list[Recorded]:
    return await read_events(bus.js, aggregate_filter(tenant, "request", request_id))


def names(recorded: list[Recorded]) -> list[str]:
    return [r.env.event_name for r in recorded]


# --- rules first ----------------------------------------------------------------


async def test_tenant_rule_approves_a_matching_request_at_once(
    bus: Bus, approval: RunningService
) -> None:
    rule = await ask(
        bus,
        "create_rule",
        ACME_ADMIN,
        tenant="acme",
        name="Contoso installers",
        effect="allow",
        match={"publisher": "contoso ltd", "file_name": "setup*.exe"},
    )
    answer = await auto_decide(bus)
    assert answer["status"] == "approved"
    assert answer["rule_id"] == rule["id"]
    assert answer["decided_by"] == f"rule:{rule['id']}"
    assert answer["scope"] == "tenant"
    history = await request_events(bus, "acme", answer["request_id"])
    assert names(history) == ["RequestCreated", "Approved"]
    assert history[1].event.model_dump()["rule_id"] == rule["id"]
    # Tenants are walls: globex's identical request is not touched by acme's rule.
    assert (await auto_decide(bus, tenant="globex"))["status"] == "open"


async def test_global_deny_beats_a_tenant_allow(bus: Bus, approval: RunningService) -> None:
    await ask(
        bus,
        "create_rule",
        ACME_ADMIN,
        tenant="acme",
        name="allow setup",
        effect="allow",
        match={"sha256": SHA_SETUP},
    )
    deny = await ask(
        bus, "create_rule", name="no contoso", effect="deny", match={"publisher": "Contoso*"}
    )
    assert deny["scope"] == "global" and "tenant" not in deny
    answer = await auto_decide(bus)
    assert (answer["status"], answer["rule_id"]) == ("denied", deny["id"])
    assert (await auto_decide(bus, tenant="globex"))["status"] == "denied"


async def test_request_without_rule_or_grant_stays_open(bus: Bus, approval: RunningService) -> None:
    answer = await auto_decide(bus)
    assert answer["status"] == "open"
    assert names(await request_events(bus, "acme", answer["request_id"])) == ["RequestCreated"]


async def test_disabled_rule_no_longer_decides(bus: Bus, approval: RunningService) -> None:
    rule = await ask(
        bus, "create_rule", tenant="acme", name="tool", effect="allow", match={"sha256": SHA_TOOL}
    )
    assert (await auto_decide(bus, app=TOOL))["status"] == "approved"
    assert await ask(bus, "disable_rule", ACME_ADMIN, rule_id=rule["id"]) == {}
    assert (await auto_decide(bus, app=TOOL))["status"] == "open"
    [listed] = (await ask(bus, "list_rules", ACME_TECH, tenant="acme"))["items"]
    assert listed["id"] == rule["id"] and listed["enabled"] is False


# --- one-time grants ------------------------------------------------------------------


async def test_once_approval_answers_the_same_users_next_request_and_only_that_one(
    bus: Bus, approval: RunningService
) -> None:
    first, _ = await open_request(bus)
    decided = await ask(
        bus, "decide", ACME_TECH, request_id=first, decision="approve", scope="once"
    )
    assert decided == {"request_id": first, "decision": "approve", "scope": "once"}
    approved = (await request_events(bus, "acme", first))[-1].event.model_dump()
    assert approved["grant_id"] == first

    assert (await auto_decide(bus, user="carol"))["status"] == "open"  # another user
    second = await auto_decide(bus)
    assert second["status"] == "approved"
    assert (second["grant_id"], second["decided_by"]) == (first, f"grant:{first}")
    consumed = await read_events(bus.js, aggregate_filter("acme", "grant", first))
    assert names(consumed) == ["GrantConsumed"]
    assert consumed[0].event.model_dump()["request_id"] == second["request_id"]

    assert (await auto_decide(bus))["status"] == "open"


# --- technician decisions ------------------------------------------------------------


async def test_tenant_decision_creates_a_rule_prefilled_from_the_request(
    bus: Bus, approval: RunningService
) -> None:
    request_id, _ = await open_request(bus)
    draft = await ask(bus, "rule_draft", ACME_TECH, request_id=request_id)
    assert draft["match"] == {
        "sha256": SHA_SETUP,
        "publisher": "Contoso Ltd",
        "app_name": "Contoso Setup",
    }
    decided = await ask(
        bus, "decide", ACME_TECH, request_id=request_id, decision="approve", scope="tenant"
    )
    rule_id = decided["rule_id"]
    [rule] = (await ask(bus, "list_rules", ACME_TECH, tenant="acme"))["items"]
    assert rule == {
        "id": rule_id,
        "name": f"Contoso Setup (from request {request_id})",
        "scope": "tenant",
        "tenant": "acme",
        "effect": "allow",
        "match": draft["match"],
        "enabled": True,
        "created_by": "tenant_technician:alice",
        "source_request_id": request_id,
    }
    # Another user of the tenant is approved by the new rule without a human.
    answer = await auto_decide(bus, user="dave")
    assert (answer["status"], answer["rule_id"]) == ("approved", rule_id)


async def test_a_rule_lost_between_decision_and_rule_is_created_later_exactly_once_as_edited(
    bus: Bus, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """approval-svc dies after appending a tenant decision and before its RuleCreated: the
    decision stands, and the rule it names is created later with the name and match the
    technician gave (they travel in the decision), once, by one of two running replicas."""
    import epm_approval.decisions as decisions
    import epm_approval.owed_rules as owed_rules

    monkeypatch.setattr(owed_rules, "CHECK_SECONDS", 0.2)
    pub = EventPublisher(bus.js, "/epm/gateway")
    await pub.append("acme", [TenantCreated(tenant_id="acme", name="acme", created_by="t")], 0)
    replicas = [await start_service(DEFINITION, settings) for _ in range(2)]
    try:
        real_append_rule = decisions.append_rule

        async def dies_here(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("killed between the decision and its rule")

        monkeypatch.setattr(decisions, "append_rule", dies_here)
        request_id, _ = await open_request(bus)
        with pytest.raises(CommandError):
            await ask(
                bus,
                "decide",
                ACME_ADMIN,  # a rule writer: may edit the rule's match
                request_id=request_id,
                decision="deny",
                scope="tenant",
                rule_name="No Contoso installers",
                rule={"publisher": "Contoso Ltd", "file_name": "setup*.exe"},
            )
        monkeypatch.setattr(decisions, "append_rule", real_append_rule)
        [_created, denied] = await read_events(
            bus.js, aggregate_filter("acme", "request", request_id)
        )
        assert denied.event.NAME == "Denied"  # the decision stands
        rule_id = denied.event.rule_id  # type: ignore[attr-defined]

        rules: list[dict[str, Any]] = []
        for _ in range(100):
            rules = (await ask(bus, "list_rules", ACME_TECH, tenant="acme"))["items"]
            if rules:
                break
            await asyncio.sleep(0.1)
        [rule] = rules
        assert (rule["id"], rule["effect"], rule["source_request_id"], rule["name"]) == (
            rule_id,
            "deny",
            request_id,
            "No Contoso installers",
        )
        assert rule["match"] == {"publisher": "Contoso Ltd", "file_name": "setup*.exe"}
        await asyncio.sleep(1.0)  # both replicas looked again: still one rule, one event
        created = [
            r
            for r in await read_events(bus.js, aggregate_filter("acme", "rule", rule_id))
            if r.event.NAME == "RuleCreated"
        ]
        assert len(created) == 1
        answer = await auto_decide(bus, user="dave")
        assert (answer["status"], answer["rule_id"]) == ("denied", rule_id)
    finally:
        for running in replicas:
            await running.stop()


async def test_global_deny_decision_creates_a_rule_for_all_customers(
    bus: Bus, approval: RunningService
) -> None:
    request_id, _ = await open_request(bus, app=TOOL)
    decided = await ask(
        bus,
        "decide",
        MSP_TECH,
        request_id=request_id,
        decision="deny",
        scope="global",
        rule_name="No Tool anywhere",
    )
    [rule] = (await ask(bus, "list_rules"))["items"]
    assert (rule["id"], rule["name"], rule["effect"]) == (
        decided["rule_id"],
        "No Tool anywhere",
        "deny",
    )
    answer = await auto_decide(bus, tenant="globex", app=TOOL)
    assert (answer["status"], answer["rule_id"]) == ("denied", decided["rule_id"])


async def test_second_decision_is_rejected(bus: Bus, approval: RunningService) -> None:
    request_id, _ = await open_request(bus)
    await ask(bus, "decide", ACME_TECH, request_id=request_id, decision="deny", scope="once")
    err = await refused(
        bus, "decide", MSP_TECH, request_id=request_id, decision="approve", scope="once"
    )
    assert err.status == 409
    assert "already denied" in err.detail


async def test_decision_after_expiry_is_rejected(bus: Bus, approval: RunningService) -> None:
    expired_event, seq = await open_request(bus)
    await EventPublisher(bus.js, "/epm/request-svc").append(
        "acme", [RequestExpired(request_id=expired_event)], seq
    )
    overdue, _ = await open_request(bus, expires_in=timedelta(seconds=-1))
    for request_id in (expired_event, overdue):
        err = await refused(
            bus, "decide", ACME_TECH, request_id=request_id, decision="approve", scope="once"
        )
        assert err.status == 409 and "expired" in err.detail


async def test_tenant_roles_cannot_decide_for_all_customers(
    bus: Bus, approval: RunningService
) -> None:
    request_id, _ = await open_request(bus)
    for who in (ACME_TECH, ACME_ADMIN):
        err = await refused(
            bus, "decide", who, request_id=request_id, decision="approve", scope="global"
        )
        assert err.status == 403
    err = await refused(
        bus, "decide", INTEGRATOR, request_id=request_id, decision="approve", scope="once"
    )
    assert err.status == 403
    assert names(await request_events(bus, "acme", request_id)) == ["RequestCreated"]


async def test_another_tenants_request_is_not_found(bus: Bus, approval: RunningService) -> None:
    request_id, _ = await open_request(bus)
    for command, args in (
        ("decide", {"request_id": request_id, "decision": "approve", "scope": "once"}),
        ("rule_draft", {"request_id": request_id}),
    ):
        err = await refused(bus, command, GLOBEX_TECH, **args)
        assert err.status == 404 and "acme" not in err.detail
    assert (await refused(bus, "list_rules", GLOBEX_TECH, tenant="acme")).status == 404


async def test_fifty_concurrent_decisions_and_an_expiry_give_exactly_one_outcome(
    bus: Bus, approval: RunningService
) -> None:
    request_id, created_seq = await open_request(bus)
    deciders = [ACME_TECH, ACME_ADMIN, MSP_TECH]
    scopes = ["once", "tenant", "global"]

    async def decide(i: int) -> str:
        who = deciders[i % 3]
        scope = scopes[i % 3]
        try:
            await ask(
                bus,
                "decide",
                who,
                request_id=request_id,
                decision="approve" if i % 2 else "deny",
                scope=scope,
            )
        except CommandError as exc:
            assert exc.status == 409, exc.detail
            return "conflict"
        return "decided"

    async def expire() -> str:
        try:
            await EventPublisher(bus.js, "/epm/request-svc").append(
                "acme", [RequestExpired(request_id=request_id)], created_seq
            )
        except ConcurrencyConflict:
            return "conflict"
        return "expired"

    outcomes = await asyncio.gather(*(decide(i) for i in range(50)), expire())
    winners = [o for o in outcomes if o != "conflict"]
    assert len(winners) == 1
    history = names(await request_events(bus, "acme", request_id))
    assert history[0] == "RequestCreated" and len(history) == 2
    assert history[1] in ("Approved", "Denied", "RequestExpired")


# --- rules managed directly --------------------------------------------------------


async def test_rule_that_matches_everything_is_refused(bus: Bus, approval: RunningService) -> None:
    err = await refused(
        bus, "create_rule", ACME_ADMIN, tenant="acme", name="all", effect="allow", match={}
    )
    assert err.status == 422 and "at least one" in err.detail


async def test_rule_that_matches_everything_by_wildcards_is_refused(
    bus: Bus, approval: RunningService
) -> None:
    err = await refused(
        bus,
        "create_rule",
        ACME_ADMIN,
        tenant="acme",
        name="all",
        effect="allow",
        match={"path": "*", "publisher": "?*"},
    )
    assert err.status == 422 and "more than wildcards" in err.detail


async def test_a_tenant_technicians_decision_creates_the_prefilled_rule_not_a_wider_one(
    bus: Bus, approval: RunningService
) -> None:
    """A tenant technician may not write rules: a decision's rule is the request's draft,
    renamed or narrowed at most. {"path": "*"} used to approve anything anyone ran."""
    request_id, _ = await open_request(bus)
    err = await refused(
        bus,
        "decide",
        ACME_TECH,
        request_id=request_id,
        decision="approve",
        scope="tenant",
        rule={"path": "*"},
    )
    assert err.status == 403 and "not change or drop what the request gave" in err.detail
    draft = (await ask(bus, "rule_draft", ACME_TECH, request_id=request_id))["match"]
    decided = await ask(
        bus,
        "decide",
        ACME_TECH,
        request_id=request_id,
        decision="approve",
        scope="tenant",
        rule_name="Setup",
        rule={**draft, "file_name": "setup.exe"},
    )
    [rule] = (await ask(bus, "list_rules", ACME_TECH, tenant="acme"))["items"]
    assert (rule["id"], rule["name"]) == (decided["rule_id"], "Setup")
    assert rule["match"] == {**draft, "file_name": "setup.exe"}


async def test_a_late_rule_decision_gets_409_and_proposes_no_rule(
    bus: Bus, approval: RunningService
) -> None:
    """A decision on a decided request used to leave a RuleProposed in the stream for good."""
    request_id, _ = await open_request(bus)
    await ask(bus, "decide", ACME_TECH, request_id=request_id, decision="approve", scope="once")
    for scope, who in (("tenant", ACME_TECH), ("global", MSP_TECH)):
        err = await refused(bus, "decide", who, request_id=request_id, decision="deny", scope=scope)
        assert err.status == 409
    info = await bus.js.stream_info("EPM_EVENTS", subjects_filter=event_type_filter("RuleProposed"))
    assert not info.state.subjects


async def test_rule_permissions_follow_the_role_table(bus: Bus, approval: RunningService) -> None:
    args = {"name": "x", "effect": "allow", "match": {"sha256": SHA_TOOL}}
    assert (await refused(bus, "create_rule", ACME_TECH, tenant="acme", **args)).status == 403
    assert (await refused(bus, "create_rule", ACME_ADMIN, **args)).status == 403  # global
    assert (await refused(bus, "create_rule", ACME_ADMIN, tenant="globex", **args)).status == 404
    rule = await ask(bus, "create_rule", ACME_ADMIN, tenant="acme", **args)
    assert (await refused(bus, "disable_rule", GLOBEX_TECH, rule_id=rule["id"])).status == 404
    global_rule = await ask(bus, "create_rule", MSP_TECH, **args)
    assert global_rule["scope"] == "global"
    assert (await refused(bus, "disable_rule", ACME_ADMIN, rule_id=global_rule["id"])).status == 403
    assert GLOBAL_TENANT not in str(await ask(bus, "list_rules", ACME_TECH))
