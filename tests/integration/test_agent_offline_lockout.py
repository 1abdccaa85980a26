"""Brute force against the agent's offline codes: ``epm-agent`` processes, one per try (so
every try is also a restart), a clock moved with EPM_AGENT_NOW, and a lockout lift sent on a
real nats-server's EPM_DEVICE stream."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from epm_domain.offline_codes import ResponseGrant
from epm_events.agent import LOCKOUT_KIND, LockoutLift
from epm_events.streams import DEVICE
from epm_events.subjects import device_subject
from epm_service.bus import Bus

from tests.e2e.test_offline_codes_flow import run_agent
from tests.unit.test_agent_offline_device import SHA, make_device

T0 = datetime(2030, 1, 10, 12, 0, tzinfo=UTC)
DEVICE_ID = "d-00000000000000b1"
WRONG = "0000-0000-0000"


agent = run_agent


def request_code(state: Path, at: datetime) -> str:
    code, out = agent(state, at, "offline", "request-code", "--exe", "x", "--sha256", SHA)
    assert code == 0, out
    return str(out["request_code"])


def guess_until_locked(state: Path, start: datetime) -> tuple[datetime, dict[str, Any]]:
    """Wrong responses, each as soon as the agent lets it, until it locks; (when, refusal)."""
    at = start
    for _ in range(10):
        code, out = agent(state, at, "offline", "respond", WRONG, "--offline")
        assert code == 1
        if out["reason"] == "locked":
            return at, out
        if out["reason"] == "wait":  # too early: refused without counting, says how long
            at += timedelta(seconds=out["retry_after"])
            continue
        assert out["reason"] == "wrong", out
    raise AssertionError("the agent never locked")


async def test_wrong_responses_lock_the_device_across_restarts_and_the_cool_off_doubles(
    bus: Bus, tmp_path: Path
) -> None:
    state = tmp_path / "agent"
    server = make_device(state, device_id=DEVICE_ID, nats_url=bus.nc.connected_url.geturl())
    first = request_code(state, T0)

    locked_at, refusal = guess_until_locked(state, T0)
    assert "locked" in refusal["error"] and "help desk" in refusal["error"]
    until = datetime.fromisoformat(refusal["locked_until"].replace("Z", "+00:00"))
    assert until - locked_at == timedelta(minutes=5)

    # Locked means locked: even the right answer is refused, in a new process, until then.
    right = server.response(first, ResponseGrant("app", SHA))
    code, out = agent(state, until - timedelta(seconds=1), "offline", "respond", right)
    assert (code, out["reason"]) == (1, "locked")
    code, out = agent(state, until - timedelta(seconds=1), "status", "--offline")
    assert out["locked_until"] == refusal["locked_until"]
    # The lockout spent the request code: its answer never works now.
    code, out = agent(state, until, "offline", "respond", right)
    assert (code, out["reason"]) == (1, "no_request"), out

    request_code(state, until)
    locked_at, refusal = guess_until_locked(state, until)
    second_until = datetime.fromisoformat(refusal["locked_until"].replace("Z", "+00:00"))
    assert second_until - locked_at == timedelta(minutes=10)

    # The help desk lifts it: a lockout message on the device channel, read at `status`.
    lift = LockoutLift(tenant="acme", device_id=DEVICE_ID, lifted_by="technician:ann")
    await bus.js.publish(
        device_subject("acme", DEVICE_ID, LOCKOUT_KIND),
        lift.model_dump_json().encode(),
        stream=DEVICE.name,
        headers={"Nats-Msg-Id": "lift-1"},
    )
    code, out = agent(state, locked_at + timedelta(seconds=1), "status")
    assert code == 0 and out["online"] is True, out
    assert "locked_until" not in out
    now = locked_at + timedelta(seconds=2)
    fresh = request_code(state, now)
    code, out = agent(
        state,
        now,
        "offline",
        "respond",
        server.response(fresh, ResponseGrant("app", SHA)),
        "--offline",
    )
    assert (code, out["granted"]) == (0, True), out
