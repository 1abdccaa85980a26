"""Issue 6 end to end: offline codes on a real `epm dev` stack, through `epm` (the help desk,
the administrator) and `epm-agent` (the computer), every refusal included.

The agent's clock is moved with EPM_AGENT_NOW (tests only) where a flow needs time to pass:
retry delays after a wrong code, and a code's expiry day."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.e2e.devstack import DevProcess, clean_env, wait_for
from tests.e2e.test_requests_flow import Stack as RequestsStack
from tests.e2e.test_requests_flow import exe, sha

pytestmark = pytest.mark.slow

DEFAULTS = {
    "challenge_response": True,
    "app_codes": True,
    "admin_codes": False,
    "self_service": False,
    "max_admin_minutes": 60,
}


def run_agent(state: Path, at: datetime, *args: str) -> tuple[int, dict[str, Any]]:
    """``epm-agent ARGS --state-dir STATE --json`` with its clock at ``at``."""
    env = clean_env() | {"EPM_AGENT_NOW": at.isoformat()}
    done = subprocess.run(
        [sys.executable, "-m", "epm_agent.cli", *args, "--state-dir", str(state), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    lines = [ln for ln in done.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, f"epm-agent printed {done.stdout!r} (stderr {done.stderr!r})"
    return done.returncode, orjson.loads(lines[0])


class Computer:
    """One enrolled `epm-agent` state dir and the clock its commands run at."""

    def __init__(self, state: Path, device_id: str) -> None:
        self.state = state
        self.device_id = device_id
        self.now = datetime.now(UTC)

    def run(self, *args: str, at: datetime | None = None) -> tuple[int, dict[str, Any]]:
        return run_agent(self.state, at or self.now, *args)

    def ok(self, *args: str) -> dict[str, Any]:
        code, out = self.run(*args)
        assert code == 0, f"epm-agent {' '.join(args)} failed: {out}"
        return out

    def refused(self, *args: str, at: datetime | None = None) -> dict[str, Any]:
        code, out = self.run(*args, at=at)
        assert code == 1 and "error" in out, out
        self.now += timedelta(seconds=10)  # past any retry delay a wrong code started
        return out

    def status_until(self, what: str, check: Any) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            status = self.ok("status")
            return status if check(status) else None

        return wait_for(what, probe, 30)


class Stack(RequestsStack):
    def refused(self, *args: str) -> dict[str, Any]:
        code, out = self.epm(*args)
        assert code != 0 and "error" in out, out
        return out

    def enroll_computer(self, tenant: str, name: str) -> Computer:
        token = self.ok("enrollment-token", "create", "--tenant", tenant)["token"]
        computer = Computer(self.tmp / f"agent-{name}", "")
        out = computer.ok(
            "enroll", "--url", self.url, "--enrollment-token", token, "--hostname", name
        )
        computer.device_id = out["device_id"]
        return computer

    def policy(self, tenant: str, *switches: str) -> dict[str, Any]:
        return self.ok("offline", "policy", "set", "--tenant", tenant, *switches)

    def codes(self, computer: Computer, *args: str) -> list[str]:
        out = self.ok("offline", "codes", "--tenant", "acme", "--device", computer.device_id, *args)
        return [c["code"] for c in out["codes"]]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("offline-e2e")
    dev = DevProcess(tmp / "data", "--port", "0", "--nats-port", "0")
    dev.start()
    try:
        stack = Stack(dev, dev.wait_ready(), tmp)
        stack.ok("tenant", "create", "acme", "--name", "Acme")
        yield stack
    finally:
        try:
            dev.stop()
        finally:
            dev.kill_everything()


@pytest.fixture(scope="module")
def computers(stack: Stack) -> tuple[Computer, Computer]:
    return stack.enroll_computer("acme", "pc-1"), stack.enroll_computer("acme", "pc-2")


def test_policy_get_and_set_change_only_what_is_given(stack: Stack) -> None:
    assert stack.ok("offline", "policy", "get", "--tenant", "acme") == DEFAULTS | {
        "response_any_app": False
    }
    changed = stack.policy("acme", "--max-admin-minutes", "120", "--no-app-codes")
    assert changed == DEFAULTS | {
        "response_any_app": False,
        "max_admin_minutes": 120,
        "app_codes": False,
    }
    assert stack.policy("acme", "--max-admin-minutes", "60", "--app-codes")["app_codes"] is True
    assert (
        "nothing to change"
        in stack.refused("offline", "policy", "set", "--tenant", "acme")["error"]
    )
    assert stack.refused("offline", "policy", "get", "--tenant", "nope")["status"] == 404


def test_help_desk_challenge_response(stack: Stack, computers: tuple[Computer, Computer]) -> None:
    pc1, _ = computers
    tool = exe(stack.tmp, "tool.exe")
    assert pc1.device_id in [
        d["device_id"] for d in stack.ok("device", "list", "--tenant", "acme")["items"]
    ]

    # Offline, the computer shows a request code; the help desk answers for this application.
    asked = pc1.ok("offline", "request-code", "--exe", str(tool), "--offline")["request_code"]
    assert len(asked) == 6 and asked.isdigit()
    answer = stack.ok(
        "offline",
        "respond",
        "--tenant",
        "acme",
        "--device",
        pc1.device_id,
        "--request-code",
        asked,
        "--sha256",
        sha(tool),
    )["response_code"]

    wrong = pc1.refused("offline", "respond", "ABCD-EFGH-JKMN", "--offline")
    assert wrong["reason"] == "wrong" and wrong["tries_left"] == 2
    typed = answer.lower().replace("-", "")  # tolerant input
    assert pc1.ok("offline", "respond", typed, "--offline") == {
        "granted": True,
        "grant": "app",
        "sha256": sha(tool),
    }
    again = pc1.refused("offline", "respond", answer, "--offline")
    assert again["reason"] == "used" and "works once" in again["error"]

    # Full admin for 30 minutes; more than the policy allows is refused at the help desk.
    asked = pc1.ok("offline", "request-code", "--admin", "30", "--offline")["request_code"]
    respond = ("offline", "respond", "--tenant", "acme", "--device", pc1.device_id)
    too_long = stack.refused(*respond, "--request-code", asked, "--admin", "90")
    assert too_long["status"] == 403 and "max_admin_minutes" in too_long["error"]
    answer = stack.ok(*respond, "--request-code", asked, "--admin", "30")["response_code"]
    granted = pc1.ok("offline", "respond", answer, "--offline")
    assert (granted["grant"], granted["minutes"]) == ("admin", 30)
    assert pc1.ok("status", "--offline")["admin_until"] == granted["ends_at"]

    # Policy off: the computer says who disabled it.
    stack.policy("acme", "--no-challenge-response")
    pc1.status_until("the policy to reach pc-1", lambda s: not s["policy"]["challenge_response"])
    off = pc1.refused("offline", "request-code", "--admin", "15", "--offline")
    assert "your administrator disabled offline challenge-response" in off["error"]
    stack.policy("acme", "--challenge-response")


def test_admin_codes_follow_the_policy_on_the_server_and_on_the_computer(
    stack: Stack, computers: tuple[Computer, Computer]
) -> None:
    pc1, _ = computers
    issue = ("--purpose", "admin", "--minutes", "30")
    disabled = stack.refused(
        "offline", "codes", "--tenant", "acme", "--device", pc1.device_id, *issue
    )
    assert disabled["status"] == 403 and "admin_codes" in disabled["error"]

    stack.policy("acme", "--admin-codes")
    [code] = stack.codes(pc1, *issue)
    stack.policy("acme", "--no-admin-codes")
    pc1.status_until("admin codes off on pc-1", lambda s: not s["policy"]["admin_codes"])
    refused = pc1.refused("offline", "redeem", code, "--offline")
    assert "your administrator disabled offline admin codes" in refused["error"]

    stack.policy("acme", "--admin-codes")
    pc1.status_until("admin codes on on pc-1", lambda s: s["policy"]["admin_codes"])
    granted = pc1.ok("offline", "redeem", code, "--offline")
    assert (granted["granted"], granted["grant"], granted["minutes"]) == (True, "admin", 30)
    assert pc1.refused("offline", "redeem", code, "--offline")["reason"] == "used"


def test_access_codes_work_once_on_their_computer_until_they_expire(
    stack: Stack, computers: tuple[Computer, Computer]
) -> None:
    pc1, pc2 = computers
    tool = exe(stack.tmp, "tool.exe")
    c1, c2 = stack.codes(pc1, "--purpose", "app", "--sha256", sha(tool), "--count", "2")

    assert pc1.ok("offline", "redeem", c1, "--exe", str(tool), "--offline")["grant"] == "app"
    assert pc1.refused("offline", "redeem", c1, "--exe", str(tool), "--offline")["reason"] == "used"
    elsewhere = pc2.refused("offline", "redeem", c2, "--exe", str(tool), "--offline")
    assert "not valid on this computer" in elsewhere["error"]
    other_app = pc1.refused("offline", "redeem", c2, "--exe", str(exe(stack.tmp, "x.exe")))
    assert "another application" in other_app["error"]
    no_app = pc1.refused("offline", "redeem", c2, "--offline")
    assert no_app["reason"] == "purpose" and "--exe" in no_app["error"]

    [short] = stack.codes(pc1, "--purpose", "app", "--expires-in", "60")
    expired = pc1.refused(
        "offline", "redeem", short, "--exe", str(tool), at=pc1.now + timedelta(days=2)
    )
    assert expired["reason"] == "expired" and "expired at the end of" in expired["error"]
    assert pc1.ok("offline", "redeem", short, "--exe", str(tool), "--offline")["granted"]


def test_rotating_the_key_voids_unused_codes_once_the_computer_reads_it(
    stack: Stack, computers: tuple[Computer, Computer]
) -> None:
    pc1, _ = computers
    tool = exe(stack.tmp, "tool.exe")
    [old] = stack.codes(pc1, "--purpose", "app")
    before = pc1.ok("status")["key_version"]
    rotated = stack.ok("offline", "rotate-key", "--tenant", "acme", "--device", pc1.device_id)
    # after an earlier test's offline admin session, request-svc rotated the key on its
    # own too (at the replay), and pc-1 may not have read that version yet
    version = rotated["key_version"]
    assert version >= before + 1

    pc1.status_until("the new key to reach pc-1", lambda s: s["key_version"] == version)
    refused = pc1.refused("offline", "redeem", old, "--exe", str(tool), "--offline")
    assert refused["reason"] == "rotated" and "rotated" in refused["error"]
    [new] = stack.codes(pc1, "--purpose", "app")
    assert pc1.ok("offline", "redeem", new, "--exe", str(tool), "--offline")["granted"]


def test_users_generate_their_own_codes_only_where_the_policy_allows(
    stack: Stack, computers: tuple[Computer, Computer]
) -> None:
    _, pc2 = computers
    tool = exe(stack.tmp, "tool.exe")
    pc2.now = datetime.now(UTC) + timedelta(minutes=5)  # past pc-2's retry delay
    generate = ("offline", "generate", "--purpose", "app", "--exe", str(tool))
    off = pc2.refused(*generate, at=datetime.now(UTC))
    assert "your administrator disabled generating your own offline codes" in off["error"]
    offline = pc2.refused(*generate, "--offline", at=datetime.now(UTC))
    assert "cannot be reached" in offline["error"]

    stack.policy("acme", "--self-service")
    code, made = pc2.run(*generate, at=datetime.now(UTC))
    assert code == 0, made
    assert set(made) >= {"code", "purpose", "expires_at"} and made["purpose"] == "app"
    granted = pc2.ok("offline", "redeem", made["code"], "--exe", str(tool), "--offline")
    assert granted["grant"] == "app"
    stack.policy("acme", "--no-self-service")

    # The device's record of the redemption names the code as its issue did (a keyed hash
    # both compute), so request-svc can tell one code used twice.
    assert pc2.ok("sync")["pending"] == 0

    def hashes(kind: str) -> list[str]:
        records = stack.ok("audit", "list", "--tenant", "acme", "--type", kind)["items"]
        return [
            r["event"]["data"]["code_hash"] for r in records if r["event"]["data"].get("code_hash")
        ]

    redeemed = wait_for("the redemption in the audit trail", lambda: hashes("OfflineCodeRedeemed"))
    assert redeemed[-1] in hashes("OfflineCodeIssued") and redeemed[-1].startswith("hmac:")


def test_the_help_desk_lifts_a_lockout_with_the_cli_and_the_computer_applies_it_online(
    stack: Stack,
) -> None:
    pc3 = stack.enroll_computer("acme", "pc-3")
    tool = exe(stack.tmp, "tool.exe")
    pc3.ok("offline", "request-code", "--exe", str(tool), "--offline")
    for _ in range(10):
        wrong = pc3.refused("offline", "respond", "0000-0000-0000", "--offline")
        if wrong["reason"] == "locked":
            break
    assert wrong["reason"] == "locked" and "ask the help desk to lift the lockout" in wrong["error"]
    assert pc3.ok("status", "--offline")["locked_until"] == wrong["locked_until"]

    # Another tenant's admin cannot even see the computer; a read-only token may not lift.
    stack.ok("tenant", "create", "globex", "--name", "Globex")
    stranger = stack.ok(
        "token", "issue", "--role", "tenant_admin", "--tenant", "globex", "--name", "g-admin"
    )["token"]
    lift = ("offline", "lift-lockout", "--tenant", "acme", pc3.device_id)
    assert stack.refused(*lift, "--token", stranger)["status"] == 404
    reader = stack.ok(
        "token", "issue", "--role", "integrator", "--tenant", "acme", "--name", "siem"
    )["token"]
    assert stack.refused(*lift, "--token", reader)["status"] == 403

    lifted = stack.ok(*lift, "--reason", "user mistyped")
    assert lifted["device_id"] == pc3.device_id
    pc3.status_until("the lift to reach pc-3", lambda s: "locked_until" not in s)
    asked = pc3.ok("offline", "request-code", "--exe", str(tool), "--offline")["request_code"]
    answer = stack.ok(
        "offline",
        "respond",
        "--tenant",
        "acme",
        "--device",
        pc3.device_id,
        "--request-code",
        asked,
        "--sha256",
        sha(tool),
    )["response_code"]
    assert pc3.ok("offline", "respond", answer, "--offline")["granted"] is True
    [event] = [e for e in stack.events("OfflineLockoutLifted") if e["subject"] == pc3.device_id]
    assert event["data"]["reason"] == "user mistyped"


def test_a_code_generated_right_after_the_policy_allows_it_is_redeemed_offline(
    stack: Stack,
) -> None:
    stack.policy("acme", "--no-self-service", "--no-admin-codes")
    pc4 = stack.enroll_computer("acme", "pc-4")
    assert pc4.ok("status")["policy"]["admin_codes"] is False
    stack.policy("acme", "--self-service", "--admin-codes")
    try:
        # No `status` in between: `offline generate` itself brings the new policy.
        made = pc4.ok("offline", "generate", "--purpose", "admin", "--minutes", "30")
        assert pc4.ok("status", "--offline")["policy"]["admin_codes"] is True
        granted = pc4.ok("offline", "redeem", made["code"], "--offline")
        assert (granted["grant"], granted["minutes"]) == ("admin", 30)
    finally:
        stack.policy("acme", "--no-self-service", "--no-admin-codes")
