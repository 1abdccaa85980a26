"""Issue 7 end to end on a real `epm dev` stack: codes redeemed offline through `epm-agent`,
uploaded by `epm-agent sync`, in the event stream once each; and a fleet replay storm by
`epm-agent simulate`."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import orjson
import pytest

from tests.e2e.devstack import DevProcess, clean_env
from tests.e2e.test_offline_codes_flow import Stack
from tests.e2e.test_requests_flow import exe

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("replay-e2e")
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


def test_codes_redeemed_offline_reach_the_event_stream_once_after_sync(stack: Stack) -> None:
    pc = stack.enroll_computer("acme", "pc-1")
    tool = exe(stack.tmp, "tool.exe")
    codes = stack.codes(pc, "--purpose", "app", "--count", "3")
    for code in codes:
        assert pc.ok("offline", "redeem", code, "--exe", str(tool), "--offline")["granted"]
    first = pc.ok("sync", "--wait", "30")
    assert first == {"sent": 6, "confirmed": 6, "pending": 0}
    assert pc.ok("sync", "--wait", "1") == {"sent": 0, "confirmed": 6, "pending": 0}


def test_simulate_a_fleet_replay_storm(stack: Stack) -> None:
    token = stack.ok(
        "token", "issue", "--role", "tenant_admin", "--tenant", "acme", "--name", "fleet"
    )["token"]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "epm_agent.cli",
            "simulate",
            "--url",
            stack.url,
            "--token",
            token,
            "--tenant",
            "acme",
            "--devices",
            "20",
            "--events",
            "10",
            "--json",
            "--state-dir",
            str(stack.tmp / "fleet"),
        ],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=300,
        check=False,
    )
    lines = [ln for ln in done.stdout.splitlines() if ln.strip()]
    assert done.returncode == 0 and len(lines) == 1, (done.stdout, done.stderr)
    out = orjson.loads(lines[0])
    assert out["devices"] == 20 and out["records"] == 400
    assert out["sent"] == 400 and out["confirmed"] == out["records"]
