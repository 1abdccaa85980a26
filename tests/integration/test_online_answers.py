"""An online request's answer on a real nats-server: approval-svc reacts to RequestCreated,
request-svc hears its decision (or its undecided notice) and answers the agent; nothing is
asked between the two services (epm_request.answers, epm_approval.decisions)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from epm_approval.app import DEFINITION as APPROVAL
from epm_approval.history import read_events
from epm_events.catalog import AppInfo, TenantCreated
from epm_events.ids import request_id_for
from epm_events.subjects import aggregate_filter, device_inbox_prefix
from epm_request import answers, intake
from epm_request.app import DEFINITION as REQUEST
from epm_service.bus import Bus
from epm_service.publisher import EventPublisher
from epm_service.runtime import RunningService, start_service
from epm_service.settings import Settings

from tests.integration.test_approval_decisions import (
    ACME_ADMIN,
    ACME_TECH,
    SETUP,
    ask,
    names,
    open_request,
    request_events,
    verdicts,
)
from tests.integration.test_request_svc import SHA, Device, enroll, events_of_type, eventually

NEVER = 600.0
"""A decision wait no test sits out: an answer that comes came from what approval-svc said."""


@pytest.fixture
async def tenants(bus: Bus) -> None:
    pub = EventPublisher(bus.js, "/epm/gateway")
    for tenant in ("acme", "globex"):
        await pub.append(tenant, [TenantCreated(tenant_id=tenant, name=tenant, created_by="t")], 0)


@pytest.fixture
async def both(
    bus: Bus, settings: Settings, tenants: None, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[None]:
    monkeypatch.setattr(answers, "DECISION_WAIT_SECONDS", NEVER)
    request_svc = await start_service(REQUEST, settings)
    approval_svc = await start_service(APPROVAL, settings)
    yield
    await approval_svc.stop()
    await request_svc.stop()


async def allow(bus: Bus, sha256: str) -> Any:
    """A tenant rule of acme's admin that approves this binary."""
    match = {"sha256": sha256}
    return await ask(
        bus, "create_rule", ACME_ADMIN, tenant="acme", name="setup", effect="allow", match=match
    )


async def approve_once(bus: Bus, request_id: str) -> None:
    """An acme technician approves once: a one-time grant for the request's user and binary."""
    await ask(bus, "decide", ACME_TECH, request_id=request_id, decision="approve", scope="once")


async def ask_online(bus: Bus, dev: Device, sha: str = SHA) -> dict[str, Any]:
    reply = f"{device_inbox_prefix(dev.tenant, dev.device_id)}.r1"
    sub = await bus.nc.subscribe(reply, max_msgs=1)
    subject, body, headers = dev.message(reply=reply, sha=sha)
    await bus.js.publish(subject, body, headers=headers)
    answer: dict[str, Any] = orjson.loads((await sub.next_msg(timeout=10)).data)
    assert answer["request_id"] == request_id_for(headers["Nats-Msg-Id"])
    return answer


async def test_a_rules_decision_reaches_the_agent_on_the_round_trip(bus: Bus, both: None) -> None:
    rule = await allow(bus, SHA)
    dev = await enroll(bus, "acme")
    answer = await ask_online(bus, dev)
    assert (answer["status"], answer["rule_id"], answer["decided_by"]) == (
        "approved",
        rule["id"],
        f"rule:{rule['id']}",
    )


async def test_a_request_nothing_decides_is_answered_open_on_approval_svcs_notice(
    bus: Bus, both: None
) -> None:
    dev = await enroll(bus, "acme")
    answer = await ask_online(bus, dev, sha="d" * 64)
    assert (answer["status"], answer["decided_by"]) == ("open", None)


async def test_a_one_time_grant_answers_the_next_request_on_the_round_trip(
    bus: Bus, both: None
) -> None:
    dev = await enroll(bus, "acme")
    first = await ask_online(bus, dev)
    assert first["status"] == "open"
    await approve_once(bus, first["request_id"])
    second = await ask_online(bus, dev)
    assert (second["status"], second["decided_by"]) == ("approved", f"grant:{first['request_id']}")
    assert (await ask_online(bus, dev))["status"] == "open"  # the grant is spent


async def test_requests_replayed_into_a_rebuilt_view_are_history_not_news(
    bus: Bus, settings: Settings, tenants: None
) -> None:
    """A restarted or rebuilt approval-svc decides no request it replays: only those created
    while it runs (as when request-svc called it, an earlier request stays a technician's)."""
    running = await start_service(APPROVAL, settings)
    try:
        await allow(bus, SETUP.sha256)
    finally:
        await running.stop()
    while_down, _ = await open_request(bus)
    for f in settings.data_dir.glob("approval-svc-*"):
        f.unlink()
    running = await start_service(APPROVAL, settings)
    try:
        [after] = await verdicts(bus, [("acme", "bob", SETUP)])
        assert after["status"] == "approved"
        assert names(await request_events(bus, "acme", while_down)) == ["RequestCreated"]
    finally:
        await running.stop()


async def test_two_approval_replicas_decide_each_request_once(
    bus: Bus, settings: Settings, tenants: None, tmp_path: Path
) -> None:
    other = settings.model_copy(update={"data_dir": tmp_path / "replica-2"})
    replicas = [await start_service(APPROVAL, settings), await start_service(APPROVAL, other)]
    try:
        await allow(bus, SETUP.sha256)
        await eventually(lambda: _both_know_a_rule(replicas))
        by_rule = await verdicts(bus, [("acme", "bob", SETUP)] * 5)
        assert {a["status"] for a in by_rule} == {"approved"}
        tool = AppInfo(file_name="tool.exe", sha256="e" * 64, publisher="Fabrikam")
        [first] = await verdicts(bus, [("acme", "carl", tool)])
        await approve_once(bus, first["request_id"])
        by_grant = await verdicts(bus, [("acme", "carl", tool)] * 3)
        assert sorted(a["status"] for a in by_grant) == ["approved", "open", "open"]
        for answer in [*by_rule, *by_grant]:
            events = await request_events(bus, "acme", answer["request_id"])
            expected = ["RequestCreated"] + (["Approved"] if answer["status"] == "approved" else [])
            assert names(events) == expected
        grant = await read_events(bus.js, aggregate_filter("acme", "grant", first["request_id"]))
        assert names(grant) == ["GrantConsumed"]  # once, whichever replica wrote it
    finally:
        for running in replicas:
            await running.stop()
        shutil.rmtree(other.data_dir, ignore_errors=True)


async def _both_know_a_rule(replicas: list[RunningService]) -> bool:
    for running in replicas:
        rows = running.ctx.projector("approval").read_now(
            lambda c: c.execute("SELECT count(*) FROM rules").fetchone()[0]
        )
        if not rows:
            return False
    return True


async def test_with_approval_svc_gone_the_agent_is_told_open_at_once(
    bus: Bus, settings: Settings, tenants: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """request-svc heard approval-svc say it reacts, then nothing for three times as long:
    it answers from its store at once instead of waiting (here ten minutes) for a verdict
    nobody is there to give."""
    monkeypatch.setattr(answers, "DECISION_WAIT_SECONDS", NEVER)
    request_svc = await start_service(REQUEST, settings)
    approval_svc = await start_service(APPROVAL, settings)
    try:
        dev = await enroll(bus, "acme")
        await allow(bus, SHA)
        assert (await ask_online(bus, dev))["status"] == "approved"
        await approval_svc.stop()
        await asyncio.sleep(answers.SILENT_AFTER_SECONDS + 0.5)
        assert (await ask_online(bus, dev))["status"] == "open"
    finally:
        await request_svc.stop()


async def test_started_without_approval_svc_request_svc_answers_open_once_it_was_silent(
    bus: Bus, settings: Settings, tenants: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """approval-svc never said it reacts since request-svc started: after three seconds of
    that silence the agent is told ``open`` at once, not after the decision wait (here ten
    minutes). An approval-svc started later would not decide the request anyway: its
    reactions begin with what comes after them."""
    monkeypatch.setattr(answers, "DECISION_WAIT_SECONDS", NEVER)
    request_svc = await start_service(REQUEST, settings)
    try:
        dev = await enroll(bus, "acme")
        await asyncio.sleep(answers.SILENT_AFTER_SECONDS + 0.5)
        assert (await ask_online(bus, dev))["status"] == "open"
    finally:
        await request_svc.stop()


# --- a once-approval used by the device that waited for it ----------------------------


async def grant_events(bus: Bus, tenant: str, grant_id: str) -> list[Any]:
    return await read_events(bus.js, aggregate_filter(tenant, "grant", grant_id))


async def test_a_once_approval_used_by_its_waiting_device_answers_no_later_request(
    bus: Bus, both: None
) -> None:
    dev = await enroll(bus, "acme")
    first = await ask_online(bus, dev)
    await approve_once(bus, first["request_id"])
    for _ in range(2):  # the agent's report, and the same report sent again
        subject, body, headers = dev.used(first["request_id"])
        await bus.js.publish(subject, body, headers=headers)

    async def spent() -> list[Any]:
        return await grant_events(bus, "acme", first["request_id"])

    [consumed] = await eventually(spent)
    assert (consumed.event.grant_id, consumed.event.request_id) == (
        first["request_id"],
        first["request_id"],
    )
    assert (await ask_online(bus, dev))["status"] == "open"  # the grant answers no one else
    await asyncio.sleep(0.3)
    assert len(await spent()) == 1


async def test_a_use_reported_by_another_device_is_refused_and_spends_nothing(
    bus: Bus, both: None
) -> None:
    dev, other = await enroll(bus, "acme"), await enroll(bus, "acme")
    first = await ask_online(bus, dev)
    await approve_once(bus, first["request_id"])
    subject, body, headers = other.used(first["request_id"])
    await bus.js.publish(subject, body, headers=headers)

    async def alerts() -> list[dict[str, Any]]:
        return await events_of_type(bus, "SecurityAlertRaised")

    [alert] = await eventually(alerts)
    assert (alert["data"]["kind"], alert["data"]["device_id"]) == (
        "foreign_request",
        other.device_id,
    )
    granted = await ask_online(bus, dev)  # the grant is still the user's
    assert granted["decided_by"] == f"grant:{first['request_id']}"


async def test_a_use_of_an_unknown_or_undecided_request_is_dead_lettered_with_its_reason(
    bus: Bus, both: None
) -> None:
    dev = await enroll(bus, "acme")
    undecided = await ask_online(bus, dev, sha="e" * 64)
    for request_id in ("req-nosuchrequest", undecided["request_id"]):
        subject, body, headers = dev.used(request_id)
        await bus.js.publish(subject, body, headers=headers)

    async def dead() -> list[str]:
        info = await bus.js.stream_info("EPM_DLQ")
        msgs = [await bus.js.get_msg("EPM_DLQ", s) for s in range(1, info.state.last_seq + 1)]
        return [m.headers["Epm-Dlq-Reason"] for m in msgs if m.headers]

    assert await eventually(lambda: _two(dead)) == ["unknown_request", "not_approved"]


async def _two(reasons: Any) -> list[str] | None:
    found: list[str] = await reasons()
    return found if len(found) >= 2 else None


async def test_a_use_reported_while_approval_svc_is_down_is_spent_when_it_returns(
    bus: Bus, settings: Settings, tenants: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(answers, "DECISION_WAIT_SECONDS", NEVER)
    monkeypatch.setattr(intake, "APPROVALS_RETRY_DELAY", 0.5)
    request_svc = await start_service(REQUEST, settings)
    approval_svc = await start_service(APPROVAL, settings)
    try:
        dev = await enroll(bus, "acme")
        first = await ask_online(bus, dev)
        await approve_once(bus, first["request_id"])
        await approval_svc.stop()
        subject, body, headers = dev.used(first["request_id"])
        await bus.js.publish(subject, body, headers=headers)
        await asyncio.sleep(2)  # put back a few times, never dead-lettered
        assert await grant_events(bus, "acme", first["request_id"]) == []
        assert (await bus.js.stream_info("EPM_DLQ")).state.messages == 0
        approval_svc = await start_service(APPROVAL, settings)

        async def spent() -> list[Any]:
            return await grant_events(bus, "acme", first["request_id"])

        [consumed] = await eventually(spent)
        assert consumed.event.request_id == first["request_id"]
    finally:
        await approval_svc.stop()
        await request_svc.stop()
