"""A revoked device is told so, not "offline": the real request-svc revokes its NATS user on
a nats-server with JWT auth, and ``epm-agent`` (a process) says its credentials were refused
and how to enroll again, with exit code 1, for ``status`` and ``request`` alike."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
from epm_agent.device_key import DeviceKey
from epm_agent.private_file import write_private_file
from epm_agent.state import Identity, StateDir
from epm_service.bus import Bus
from epm_service.rpc import call
from epm_service.runtime import RunningService

from tests.conftest import AuthNats
from tests.e2e.devstack import clean_env
from tests.integration.test_natsauth_revocation import (
    ADMIN,
    device_refused,
    enroll,
    gateway_bus,
    request_svc,
)

__all__ = ["gateway_bus", "request_svc"]  # fixtures


def agent_state(state_dir: Path, answer: dict[str, Any], nats_url: str) -> None:
    """What ``epm-agent enroll`` leaves behind for this enrollment answer."""
    with StateDir(state_dir).open(create=True) as state:
        DeviceKey.generate().save(state.key_path)
        creds = answer["nats"]["creds"]
        if creds:
            write_private_file(state.creds_path, creds.encode())
        state.save_identity(
            Identity(
                device_id=answer["device_id"],
                tenant=answer["tenant"],
                hostname="pc-1",
                server_url="http://127.0.0.1:1",
                nats_url=nats_url,
                inbox_prefix=answer["inbox_prefix"],
                subjects={},
                policy=dict(answer["policy"]),
                nats_creds_file=state.creds_path.name if creds else None,
            )
        )


def run_agent(state: Path, *args: str) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "epm_agent.cli", *args, "--state-dir", str(state), "--json"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )
    lines = [ln for ln in done.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, f"epm-agent printed {done.stdout!r} (stderr {done.stderr!r})"
    return done.returncode, orjson.loads(lines[0])


async def test_a_revoked_device_is_told_its_credentials_were_refused_not_that_it_is_offline(
    gateway_bus: Bus, request_svc: RunningService, nats_auth_server: AuthNats, tmp_path: Path
) -> None:
    answer = await enroll(gateway_bus)
    state = tmp_path / "agent"
    agent_state(state, answer, nats_auth_server.url)
    code, out = run_agent(state, "status")
    assert (code, out["online"]) == (0, True), out

    args = {"tenant": "acme", "device_id": answer["device_id"]}
    await call(gateway_bus.nc, "request-svc", "revoke_device", args, ADMIN)
    assert await device_refused(nats_auth_server.url, answer)

    code, out = run_agent(state, "status")
    assert code == 1, out
    assert "NATS credentials were refused" in out["error"]
    assert "revoked" in out["error"] and "--state-dir <new dir>" in out["error"]
    assert "cannot be reached" not in out["error"]

    code, out = run_agent(
        state,
        "request",
        "--exe",
        "C:/tool.exe",
        "--sha256",
        "ab" * 32,
        "--user",
        "u",
        "--reason",
        "r",
    )
    assert code == 1 and "NATS credentials were refused" in out["error"], out
    assert "offline request-code" not in out["error"]

    # --offline still works for what needs no server (the lockout, the policy it has).
    code, out = run_agent(state, "status", "--offline")
    assert (code, out["online"]) == (0, False), out


async def test_an_unreachable_server_is_still_offline_not_refused(tmp_path: Path) -> None:
    state = tmp_path / "agent"
    answer = {
        "device_id": "d-0000000000000abc",
        "tenant": "acme",
        "inbox_prefix": "_INBOX.acme.d-0000000000000abc",
        "policy": {"challenge_response": True},
        "nats": {"creds": None},
    }
    agent_state(state, answer, "nats://127.0.0.1:1")
    code, out = run_agent(state, "status")
    assert (code, out["online"]) == (0, False), out


def test_enrolling_a_used_state_dir_again_says_a_revoked_device_needs_a_new_one(
    tmp_path: Path,
) -> None:
    state = tmp_path / "agent"
    answer = {
        "device_id": "d-0000000000000abd",
        "tenant": "acme",
        "inbox_prefix": "_INBOX.acme.d-0000000000000abd",
        "policy": {},
        "nats": {"creds": None},
    }
    agent_state(state, answer, "nats://127.0.0.1:1")
    code, out = run_agent(state, "enroll", "--url", "http://127.0.0.1:1", "--enrollment-token", "t")
    assert code == 1 and "already enrolled" in out["error"], out
    assert "revoked" in out["error"] and "new --state-dir" in out["error"]
