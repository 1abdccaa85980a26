"""The help desk lifts a device's offline-code lockout: POST .../lockout-lift (the gateway) ->
approval-svc's ``lift_lockout`` (OfflineLockoutLifted in EPM_EVENTS) -> its outbox -> a
LockoutLift on the device's EPM_DEVICE subject -> a real ``epm-agent`` process, locked out by
wrong response codes, is unlocked at its next online contact. On a real nats-server."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from epm_domain.offline_codes import ResponseGrant
from epm_events.agent import LockoutLift
from epm_events.codec import decode
from epm_events.streams import EVENTS
from epm_service.bus import Bus

from tests.integration.test_agent_offline_lockout import T0, agent, guess_until_locked, request_code
from tests.integration.test_gateway_api import Gateway, assert_problem, gateway_settings
from tests.integration.test_offline_gateway import stack
from tests.integration.test_offline_policy import (
    ACME_TECH,
    GLOBEX_ADMIN,
    INTEGRATOR,
    Device,
    ask,
    enroll,
    refused,
    wait_device_messages,
)
from tests.unit.test_agent_offline_device import SHA, make_device

__all__ = ["gateway_settings", "stack"]  # fixtures


async def lifted_events(bus: Bus, device_id: str) -> list[dict[str, Any]]:
    """OfflineLockoutLifted of the device as EPM_EVENTS holds them (what audit-svc chains)."""
    psub = await bus.js.pull_subscribe(
        f"epm.evt.*.devicekey.{device_id}.OfflineLockoutLifted", stream=EVENTS.name
    )
    try:
        pending = (await psub.consumer_info()).num_pending or 0
        msgs = await psub.fetch(pending, timeout=5) if pending else []
        return [decode(m.data).data for m in msgs]
    finally:
        await psub.unsubscribe()


async def test_a_locked_out_agent_is_unlocked_at_its_next_online_contact_after_a_lift_over_http(
    bus: Bus, stack: Gateway, tmp_path: Path
) -> None:
    gw = stack
    await gw.tenant("acme")
    await gw.tenant("globex")
    tech = (await gw.token("tenant_technician", "acme"))["token"]
    device = await enroll(bus)
    state = tmp_path / "agent"
    fake = make_device(state, device_id=device.device_id, nats_url=bus.nc.connected_url.geturl())

    request_code(state, T0)
    locked_at, refusal = guess_until_locked(state, T0)
    assert "ask the help desk to lift the lockout" in refusal["error"]

    r = await gw.post(
        f"/v1/tenants/acme/devices/{device.device_id}/lockout-lift",
        {"reason": "user mistyped the response"},
        token=tech,
    )
    assert r.status_code == 200, r.text
    assert r.json()["device_id"] == device.device_id
    assert r.json()["lifted_by"].endswith("tenant_technician of acme")

    # Still locked until the agent is online again: the lift waits on its device channel.
    code, out = agent(state, locked_at + timedelta(seconds=1), "status", "--offline")
    assert out["locked_until"] == refusal["locked_until"]
    # The outbox relay publishes the lift a moment after the command answers.
    await wait_device_messages(bus, device, "lockout", 1)
    code, out = agent(state, locked_at + timedelta(seconds=2), "status")
    assert code == 0 and out["online"] is True, out
    assert "locked_until" not in out

    now = locked_at + timedelta(seconds=3)
    fresh = request_code(state, now)
    right = fake.response(fresh, ResponseGrant("app", SHA))
    code, out = agent(state, now, "offline", "respond", right, "--offline")
    assert (code, out["granted"]) == (0, True), out

    [event] = await lifted_events(bus, device.device_id)
    assert event["device_id"] == device.device_id
    assert event["reason"] == "user mistyped the response"
    assert event["lifted_by"] == r.json()["lifted_by"]


async def test_lifting_another_tenants_device_is_404_and_a_read_only_role_is_403(
    bus: Bus, stack: Gateway
) -> None:
    gw = stack
    await gw.tenant("acme")
    await gw.tenant("globex")
    stranger = (await gw.token("tenant_admin", "globex"))["token"]
    integrator = (await gw.token("integrator", "acme"))["token"]
    device = await enroll(bus)
    other = await enroll(bus, "globex")
    path = f"/v1/tenants/acme/devices/{device.device_id}/lockout-lift"

    body = assert_problem(await gw.post(path, {}, token=stranger), 404)
    assert device.device_id not in body["detail"]
    # The device of another tenant under one's own tenant: 404 as well.
    assert_problem(
        await gw.post(f"/v1/tenants/globex/devices/{device.device_id}/lockout-lift", {}, stranger),
        404,
    )
    assert_problem(await gw.post(path, {}, token=integrator), 403)
    r = await gw.client.post(path, headers=gw.auth(gw.admin))  # no body: a reason is optional
    assert r.status_code == 200, r.text

    assert await lifted_events(bus, other.device_id) == []
    assert len(await lifted_events(bus, device.device_id)) == 1


async def test_the_lift_reaches_the_device_channel_once_and_codes_still_issue_after_it(
    bus: Bus, stack: Gateway
) -> None:
    gw = stack
    await gw.tenant("acme")
    device: Device = await enroll(bus)
    lifted = await ask(
        bus, "lift_lockout", ACME_TECH, tenant="acme", device_id=device.device_id, reason="x"
    )
    [message] = await wait_device_messages(bus, device, "lockout", 1)
    lift = LockoutLift.model_validate(message)
    assert (lift.tenant, lift.device_id, lift.lifted_by) == (
        "acme",
        device.device_id,
        lifted["lifted_by"],
    )

    # The lift is on the device's offline-key aggregate: issuing codes right after still works.
    issued = await ask(
        bus, "offline_codes", ACME_TECH, tenant="acme", device_id=device.device_id, purpose="app"
    )
    assert issued["codes"][0]["code"]
    assert (
        await refused(bus, "lift_lockout", GLOBEX_ADMIN, tenant="acme", device_id=device.device_id)
    ).status == 404
    assert (
        await refused(bus, "lift_lockout", INTEGRATOR, tenant="acme", device_id=device.device_id)
    ).status == 403
    assert (
        await refused(bus, "lift_lockout", ACME_TECH, tenant="acme", device_id="d-nope")
    ).status == 404
