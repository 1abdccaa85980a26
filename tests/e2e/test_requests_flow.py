"""Issue 5 end to end: a real `epm dev` stack driven by the `epm` and `epm-agent` commands."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest

from tests.e2e.devstack import DevProcess, clean_env, epm_json, wait_for

pytestmark = pytest.mark.slow


def agent(state: Path, *args: str, timeout: float = 60) -> tuple[int, dict[str, Any]]:
    cmd = [
        sys.executable,
        "-m",
        "epm_agent.cli",
        args[0],
        "--state-dir",
        str(state),
        "--json",
        *args[1:],
    ]
    done = subprocess.run(
        cmd, capture_output=True, text=True, env=clean_env(), timeout=timeout, check=False
    )
    lines = [ln for ln in done.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, f"epm-agent printed {done.stdout!r} (stderr {done.stderr!r})"
    return done.returncode, orjson.loads(lines[0])


class Stack:
    def __init__(self, dev: DevProcess, endpoints: dict[str, Any], tmp: Path) -> None:
        self.dev = dev
        self.url = endpoints["http"]
        self.nats = endpoints["nats"]
        self.nats_creds = endpoints["nats_admin_creds"]  # epm dev's NATS needs a user
        self.tmp = tmp

    def epm(self, *args: str) -> tuple[int, dict[str, Any]]:
        return epm_json(*args, "--data-dir", str(self.dev.data_dir))

    def ok(self, *args: str) -> dict[str, Any]:
        code, out = self.epm(*args)
        assert code == 0, f"epm {' '.join(args)} failed: {out}"
        return out

    def enroll(self, tenant: str, name: str) -> Path:
        token = self.ok("enrollment-token", "create", "--tenant", tenant)["token"]
        state = self.tmp / f"agent-{name}"
        code, out = agent(
            state, "enroll", "--url", self.url, "--enrollment-token", token, "--hostname", name
        )
        assert code == 0, out
        assert out["tenant"] == tenant
        return state

    def events(self, name: str) -> list[dict[str, Any]]:
        async def read() -> list[dict[str, Any]]:
            nc = await nats.connect(self.nats, user_credentials=self.nats_creds)
            try:
                js = nc.jetstream()
                info = await js.stream_info("EPM_EVENTS")
                out = []
                for seq in range(info.state.first_seq, info.state.last_seq + 1):
                    msg = await js.get_msg("EPM_EVENTS", seq)
                    if msg.subject.endswith("." + name):
                        out.append(orjson.loads(msg.data or b"{}"))
                return out
            finally:
                await nc.close()

        return asyncio.run(read())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("requests-e2e")
    dev = DevProcess(tmp / "data", "--port", "0", "--nats-port", "0")
    dev.start()
    try:
        endpoints = dev.wait_ready()
        yield Stack(dev, endpoints, tmp)
    finally:
        try:
            dev.stop()
        finally:
            dev.kill_everything()


def exe(tmp: Path, name: str) -> Path:
    path = tmp / name
    path.write_bytes(f"binary of {name}".encode())
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def request(state: Path, path: Path, user: str = "bob", wait: str = "0") -> dict[str, Any]:
    code, out = agent(
        state,
        "request",
        "--exe",
        str(path),
        "--publisher",
        "Contoso",
        "--app-name",
        path.stem.title(),
        "--user",
        user,
        "--reason",
        "work",
        "--wait",
        wait,
    )
    assert code == 0, out
    return out


def test_requests_rules_and_decisions_end_to_end(stack: Stack) -> None:
    for t in ("acme", "globex"):
        stack.ok("tenant", "create", t, "--name", t.title())
    a1, a2 = stack.enroll("acme", "a1"), stack.enroll("acme", "a2")
    b1 = stack.enroll("globex", "b1")
    globex_admin = stack.ok(
        "token", "issue", "--role", "tenant_admin", "--tenant", "globex", "--name", "globex-admin"
    )["token"]

    # A1 asks: open, in acme's local view and the global view, not in globex's.
    editor = exe(stack.tmp, "editor.exe")
    first = request(a1, editor)
    assert first["status"] == "open"
    rid = first["request_id"]
    local = stack.ok("request", "list", "--tenant", "acme")
    assert [r["id"] for r in local["items"]] == [rid]
    assert rid in [r["id"] for r in stack.ok("request", "list")["items"]]
    code, theirs = epm_json("request", "list", "--token", globex_admin, "--url", stack.url)
    assert code == 0 and theirs["items"] == []
    code, hidden = epm_json("request", "show", rid, "--token", globex_admin, "--url", stack.url)
    assert code != 0 and "not found" in hidden["error"]

    # Approve for the tenant with the pre-filled rule: A2's same application is approved by it.
    draft = stack.ok("request", "rule-draft", rid)
    assert draft["match"]["sha256"] == sha(editor) and not draft["match"].get("path")
    decided = stack.ok(
        "request", "decide", rid, "--approve", "--scope", "tenant", "--rule-name", "Editor"
    )
    assert decided["decision"] == "approve" and decided["rule_id"]
    assert stack.ok("request", "list", "--tenant", "acme")["items"] == []  # left the open list
    by_rule = request(a2, editor, user="carol")
    assert by_rule["status"] == "approved" and by_rule["decided_by"] == f"rule:{decided['rule_id']}"

    # A second decision gets a conflict.
    code, again = stack.epm("request", "decide", rid, "--deny", "--scope", "once")
    assert code != 0 and again.get("status") == 409

    # Deny for all customers: globex's request for it is denied without a human.
    game = exe(stack.tmp, "game.exe")
    asked = request(a1, game)
    stack.ok("request", "decide", asked["request_id"], "--deny", "--scope", "global")
    denied = request(b1, game, user="dave")
    assert denied["status"] == "denied"

    # Approve once: the same user's next request is answered by the grant, the one after opens.
    tool = exe(stack.tmp, "tool.exe")
    once = request(a1, tool, user="erin")
    stack.ok("request", "decide", once["request_id"], "--approve", "--scope", "once")
    code, status = agent(a1, "status")
    assert code == 0
    assert {"request_id": once["request_id"], "status": "approved"} in [
        {k: r[k] for k in ("request_id", "status")} for r in status["requests"]
    ]
    granted = request(a1, tool, user="erin")
    assert granted["status"] == "approved" and granted["decided_by"].startswith("grant:")
    assert request(a1, tool, user="erin")["status"] == "open"
    consumed = stack.events("GrantConsumed")
    assert [
        e["data"]["request_id"] for e in consumed if e["data"]["grant_id"] == once["request_id"]
    ] == [granted["request_id"]]

    # A request signed by the wrong key is refused and recorded.
    imposter = stack.tmp / "agent-imposter"
    subprocess.run(["cp", "-a", str(a2), str(imposter)], check=True)
    key_file = imposter / "device.key"
    other = stack.enroll("acme", "other")
    key_file.write_bytes((other / "device.key").read_bytes())
    before = len(stack.events("RequestCreated"))
    request(imposter, exe(stack.tmp, "evil.exe"))
    alerts = wait_for(
        "a security alert",
        lambda: [
            a for a in stack.events("SecurityAlertRaised") if a["data"]["kind"] == "bad_signature"
        ],
    )
    assert alerts
    assert len(stack.events("RequestCreated")) == before

    # A revoked device is refused: its NATS user is revoked with it, so the server no longer
    # lets it in and nothing it sends arrives (request-svc's revoked_device check stays behind).
    device_a2 = agent(a2, "status")[1]["device_id"]
    stack.ok("device", "revoke", device_a2, "--tenant", "acme")
    code, out = agent(
        a2, "request", "--exe", str(exe(stack.tmp, "late.exe")), "--user", "bob", "--reason", "x"
    )
    assert code != 0 and "NATS credentials were refused" in out["error"], out
    assert "cannot be reached" not in out["error"]
    code, out = agent(a2, "status")
    assert code == 1 and "probably revoked" in out["error"], out
    assert len(stack.events("RequestCreated")) == before


def test_a_once_approval_the_waiting_user_got_is_used_up_and_the_next_attempt_asks_again(
    stack: Stack,
) -> None:
    """The user waits (``--wait``) while a technician approves once: the user elevates on
    that answer, so the grant is spent on the request itself (GrantConsumed naming it), and
    the same user's next attempt opens a new request instead of being approved again."""
    stack.ok("tenant", "create", "initech", "--name", "Initech")
    pc = stack.enroll("initech", "i1")
    app = exe(stack.tmp, "installer.exe")
    waiting = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "epm_agent.cli",
            "request",
            "--state-dir",
            str(pc),
            "--json",
            "--exe",
            str(app),
            "--user",
            "frank",
            "--reason",
            "install",
            "--wait",
            "60",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        [opened] = wait_for(
            "the request in the open list",
            lambda: stack.ok("request", "list", "--tenant", "initech")["items"],
        )
        stack.ok("request", "decide", opened["id"], "--approve", "--scope", "once")
        out, err = waiting.communicate(timeout=60)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    assert waiting.returncode == 0, err
    used = orjson.loads(out)
    assert used["request_id"] == opened["id"] and used["status"] == "approved"

    spent = wait_for(
        "the grant spent on its own request",
        lambda: [
            e for e in stack.events("GrantConsumed") if e["data"]["request_id"] == opened["id"]
        ],
    )
    assert [e["data"]["grant_id"] for e in spent] == [opened["id"]]
    again = request(pc, app, user="frank")
    assert again["status"] == "open" and again["request_id"] != opened["id"]
    # Reported once: a status (another contact) sends nothing again.
    assert agent(pc, "status")[0] == 0
    assert (
        len([e for e in stack.events("GrantConsumed") if e["data"]["request_id"] == opened["id"]])
        == 1
    )


def test_expiry_with_a_short_ttl_survives_a_full_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    dev = DevProcess(data, "--port", "0", "--nats-port", "0", "--request-ttl", "4s")
    try:
        endpoints = dev.start().wait_ready()
        s = Stack(dev, endpoints, tmp_path)
        s.ok("tenant", "create", "acme", "--name", "Acme")
        state = s.enroll("acme", "pc")
        rid = request(state, exe(tmp_path, "app.exe"))["request_id"]
        assert dev.stop() == 0
        # Nothing runs while the request's time passes.
        time.sleep(5)
        dev2 = DevProcess(data, "--request-ttl", "4s", name="epm-dev-2")
        try:
            s2 = Stack(dev2, dev2.start().wait_ready(), tmp_path)
            wait_for("the request to expire", lambda: s2.events("RequestExpired"))
            shown = s2.ok("request", "show", rid)
            assert shown["status"] == "expired"
            code, late = s2.epm("request", "decide", rid, "--approve", "--scope", "once")
            assert code != 0 and late.get("status") == 409
            code, st = agent(state, "status")
            assert {"request_id": rid, "status": "expired"} in [
                {k: r[k] for k in ("request_id", "status")} for r in st["requests"]
            ]
        finally:
            dev2.stop()
            dev2.kill_everything()
    finally:
        dev.kill_everything()
