"""Audit end to end: a real ``epm dev`` stack, an agent's request, and the ``epm audit`` commands:
list, export to a file, verify that file offline (and find a changed byte), tenant walls."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.e2e.devstack import clean_env, epm_json
from tests.e2e.test_requests_flow import Stack, exe, request, stack

__all__ = ["stack"]  # the requests flow's epm dev stack, one for this module
pytestmark = pytest.mark.slow


def audit_list(stack: Stack, *args: str) -> list[dict[str, Any]]:
    return list(stack.ok("audit", "list", *args)["items"])


def until_listed(stack: Stack, *args: str, deadline: float = 30.0) -> list[dict[str, Any]]:
    end = time.monotonic() + deadline
    while not (found := audit_list(stack, *args)):
        assert time.monotonic() < end, f"no audit record for {args} within {deadline:g}s"
        time.sleep(0.1)
    return found


def data_dir(stack: Stack) -> list[str]:
    return ["--data-dir", str(stack.dev.data_dir)]


def export(stack: Stack, target: Path, *args: str) -> None:
    with target.open("wb") as out:
        done = subprocess.run(
            [sys.executable, "-m", "epm_cli.main", "audit", "export", *args, *data_dir(stack)],
            stdout=out,
            stderr=subprocess.PIPE,
            env=clean_env(),
            timeout=60,
            check=False,
        )
    assert done.returncode == 0, done.stderr


def test_audit_list_export_and_offline_verify_through_the_cli(stack: Stack) -> None:
    for t in ("acme", "globex"):
        stack.ok("tenant", "create", t, "--name", t.title())
    agent_state = stack.enroll("acme", "a1")
    asked = request(agent_state, exe(stack.tmp, "setup.exe"), user="bob")
    request_id = asked["request_id"]

    [created] = until_listed(stack, "--tenant", "acme", "--request", request_id)
    assert created["type"] == "RequestCreated"
    assert created["user"] == "bob"
    assert created["received_at"].endswith("Z")
    assert created["event"]["data"]["request_id"] == request_id
    [enrolled] = audit_list(stack, "--tenant", "acme", "--type", "DeviceEnrolled")
    assert enrolled["device"] == created["device"]

    exported = stack.tmp / "acme.ndjson"
    export(stack, exported, "--tenant", "acme")
    lines = exported.read_bytes().splitlines()
    assert {orjson.loads(line)["tenant"] for line in lines} == {"acme"}
    assert request_id.encode() in exported.read_bytes()

    keys = stack.ok("audit", "keys")
    assert [k["key_id"] for k in keys["items"]] == ["audit-1"]
    keys_file = stack.tmp / "keys.json"
    keys_file.write_bytes(orjson.dumps(keys))
    verdict = stack.ok("audit", "verify", "--file", str(exported), "--keys", str(keys_file))
    assert (verdict["ok"], verdict["records"]) == (True, len(lines))
    assert stack.ok("audit", "verify", "--file", str(exported))["ok"]  # keys fetched
    server = stack.ok("audit", "verify", "--tenant", "acme")
    assert server["ok"] and server["records"] >= len(lines)

    tampered = stack.tmp / "tampered.ndjson"
    target = next(i for i, line in enumerate(lines) if b'"user":"bob"' in line)
    changed = list(lines)
    changed[target] = changed[target].replace(b'"user":"bob"', b'"user":"bot"', 1)
    tampered.write_bytes(b"\n".join(changed) + b"\n")
    code, out = stack.epm("audit", "verify", "--file", str(tampered), "--keys", str(keys_file))
    assert code == 1
    assert out["ok"] is False
    assert out["first_bad"] == orjson.loads(lines[target])["seq"]
    assert f"seq {out['first_bad']}" in out["error"]


def test_a_tenant_token_reads_its_own_audit_only(stack: Stack) -> None:
    stack.ok("tenant", "create", "initech", "--name", "Initech")
    token = stack.ok(
        "token", "issue", "--role", "tenant_technician", "--tenant", "initech", "--name", "auditor"
    )["token"]
    code, own = epm_json("audit", "list", "--token", token, *data_dir(stack))
    assert code == 0 and {r["tenant"] for r in own["items"]} == {"initech"}
    code, out = epm_json("audit", "list", "--tenant", "acme", "--token", token, *data_dir(stack))
    assert (code, out.get("status")) == (1, 404), out
