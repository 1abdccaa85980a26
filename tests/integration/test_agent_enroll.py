"""Enrollment over real HTTP, against a tiny stand-in for the gateway's /v1/agent/enroll.
The NATS CA it keeps (--nats-ca, or the answer's nats.ca) is used over TLS in
test_agent_tls.py."""

from __future__ import annotations

import base64
import json
import re
import stat
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
from epm_agent import Agent, AgentError, ServerUnreachable
from epm_agent.cli import main
from epm_agent.device_key import DeviceKey, public_key_b64
from epm_agent.enrollment import EnrollmentRefused
from epm_agent.state import StateDir
from epm_events.subjects import device_inbox_prefix
from epm_service.natsserver import free_port

from tests.certificates import issue_tls_files

PROBLEMS = {
    "used-token": (409, "this enrollment token was already used; ask for a new one"),
    "old-token": (410, "this enrollment token expired; ask for a new one"),
}


class EnrollEdge(BaseHTTPRequestHandler):
    received: list[dict[str, Any]]
    server_ca: str  # handed out for "ca-token" (the answer's nats.ca)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.received.append(body)
        token = body["enrollment_token"]
        if self.path != "/v1/agent/enroll":
            self._send(404, {"title": "Not Found", "status": 404}, "application/problem+json")
        elif token == "good-token":
            self._send(201, answer_for("d-enrolled-1"), "application/json")
        elif token in ("ca-token", "bad-ca-token"):
            answer = answer_for("d-enrolled-1")
            answer["nats"]["ca"] = self.server_ca if token == "ca-token" else "not a PEM"
            self._send(201, answer, "application/json")
        elif token in PROBLEMS:
            status, detail = PROBLEMS[token]
            self._send(
                status,
                {"type": "about:blank", "title": "Conflict", "status": status, "detail": detail},
                "application/problem+json",
            )
        else:
            self._send(
                404,
                {"title": "Not Found", "status": 404, "detail": "unknown enrollment token"},
                "application/problem+json",
            )

    def _send(self, status: int, obj: dict[str, Any], content_type: str) -> None:
        payload = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def answer_for(device_id: str) -> dict[str, Any]:
    return {
        "device_id": device_id,
        "tenant": "acme",
        "nats": {"url": "nats://127.0.0.1:4222", "user": None, "password": None, "creds": None},
        "inbox_prefix": device_inbox_prefix("acme", device_id),
        "subjects": {
            "publish": f"epm.agent.acme.{device_id}.>",
            "device": f"epm.device.acme.{device_id}.>",
        },
        "policy": {
            "challenge_response": True,
            "app_codes": True,
            "admin_codes": False,
            "self_service": False,
            "max_admin_minutes": 60,
        },
        "key_material": None,
    }


@pytest.fixture(scope="module")
def server_ca(tmp_path_factory: pytest.TempPathFactory) -> str:
    return issue_tls_files(tmp_path_factory.mktemp("server-ca")).ca.read_text()


@pytest.fixture
def edge(server_ca: str) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []
    handler = type("Handler", (EnrollEdge,), {"received": received, "server_ca": server_ca})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()
    server.server_close()
    thread.join()


async def test_enroll_stores_the_identity_and_a_key_only_this_user_can_read(
    edge: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    url, received = edge
    state_dir = tmp_path / "agent"
    async with Agent(state_dir) as agent:
        identity = await agent.enroll(url + "/", "good-token", hostname="pc-42")

    assert (identity.device_id, identity.tenant) == ("d-enrolled-1", "acme")
    assert identity.inbox_prefix == "_INBOX.acme.d-enrolled-1"
    assert identity.policy["max_admin_minutes"] == 60
    sent = received[0]
    assert (sent["enrollment_token"], sent["hostname"]) == ("good-token", "pc-42")
    state = StateDir(state_dir)
    key = DeviceKey.load(state.key_path)
    assert sent["public_key"] == public_key_b64(key.public_key)
    assert len(base64.b64decode(sent["public_key"])) == 32
    assert stat.S_IMODE(state.key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.db_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    with state.open(create=False):
        stored = state.require_identity()
    assert stored.server_url == url and stored.nats_url == "nats://127.0.0.1:4222"


@pytest.mark.parametrize(
    ("token", "status", "reason"),
    [
        ("used-token", 409, "already used"),
        ("old-token", 410, "expired"),
        ("no-such-token", 404, "unknown enrollment token"),
    ],
)
async def test_a_refused_enrollment_says_why_and_leaves_no_identity(
    edge: tuple[str, list[dict[str, Any]]], tmp_path: Path, token: str, status: int, reason: str
) -> None:
    url, _ = edge
    async with Agent(tmp_path / "agent") as agent:
        with pytest.raises(EnrollmentRefused, match=reason) as refused:
            await agent.enroll(url, token)
        assert refused.value.status == status
        assert agent.identity is None
    assert not StateDir(tmp_path / "agent").key_path.exists()


async def test_enrolling_an_enrolled_state_dir_again_is_refused(
    edge: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    url, received = edge
    async with Agent(tmp_path / "agent") as agent:
        await agent.enroll(url, "good-token")
        with pytest.raises(Exception, match="already enrolled as device d-enrolled-1"):
            await agent.enroll(url, "good-token")
    assert len(received) == 1


async def test_enroll_against_nothing_listening_says_the_server_is_unreachable(
    tmp_path: Path,
) -> None:
    async with Agent(tmp_path / "agent") as agent:
        with pytest.raises(ServerUnreachable, match="check --url"):
            await agent.enroll(f"http://127.0.0.1:{free_port()}", "good-token")


def test_cli_enroll_prints_device_and_tenant_as_json(
    edge: tuple[str, list[dict[str, Any]]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = edge
    state = str(tmp_path / "agent")
    code = main(
        ["enroll", "--url", url, "--enrollment-token", "good-token", "--state-dir", state, "--json"]
    )

    assert code == 0
    assert orjson.loads(capsys.readouterr().out) == {"device_id": "d-enrolled-1", "tenant": "acme"}


def test_cli_refused_enrollment_is_one_json_error_without_the_token(
    edge: tuple[str, list[dict[str, Any]]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = edge
    state = str(tmp_path / "agent")
    code = main(
        ["enroll", "--url", url, "--enrollment-token", "used-token", "--state-dir", state, "--json"]
    )

    out = capsys.readouterr().out
    assert code == 1
    assert out.count("\n") == 1
    error = orjson.loads(out)
    assert list(error) == ["error"] and "already used" in error["error"]
    assert "used-token" not in out


# --- the NATS CA (--nats-ca, $EPM_AGENT_NATS_CA, the answer's nats.ca) ----------------


async def test_enroll_keeps_the_given_nats_ca_in_the_state_dir(
    edge: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    url, _ = edge
    ca = issue_tls_files(tmp_path / "tls").ca
    async with Agent(tmp_path / "agent") as agent:
        await agent.enroll(url, "ca-token", nats_ca=ca)  # the answer's CA is overridden
        path = agent.state.nats_ca_path
    assert path == tmp_path / "agent" / "nats-ca.pem"
    assert path.read_bytes() == ca.read_bytes()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_enroll_keeps_the_ca_the_server_hands_out(
    edge: tuple[str, list[dict[str, Any]]], tmp_path: Path, server_ca: str
) -> None:
    url, _ = edge
    async with Agent(tmp_path / "agent") as agent:
        await agent.enroll(url, "ca-token")
    assert StateDir(tmp_path / "agent").nats_ca_path.read_text() == server_ca


async def test_enroll_without_a_ca_keeps_none(
    edge: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    url, _ = edge
    state = StateDir(tmp_path / "agent")
    state.path.mkdir(mode=0o700)
    state.nats_ca_path.write_text("left by an enrollment that failed\n")
    async with Agent(state.path) as agent:
        await agent.enroll(url, "good-token")
    assert not state.nats_ca_path.exists()


@pytest.mark.parametrize(
    ("problem", "message"),
    [
        ("missing", "cannot read it (No such file or directory)"),
        ("a key", "holds no PEM CA certificate"),
        ("empty", "holds no PEM CA certificate (Empty certificate data)"),
        ("binary", "holds no PEM CA certificate"),
    ],
)
async def test_a_bad_nats_ca_file_is_refused_before_the_token_is_spent(
    edge: tuple[str, list[dict[str, Any]]], tmp_path: Path, problem: str, message: str
) -> None:
    url, received = edge
    files = issue_tls_files(tmp_path / "tls")
    bad = {
        "missing": tmp_path / "absent.crt",
        "a key": files.key,
        "empty": tmp_path / "empty.crt",
        "binary": tmp_path / "ca.der",
    }[problem]
    (tmp_path / "empty.crt").write_bytes(b"")
    (tmp_path / "ca.der").write_bytes(b"\x30\x82\x01\x0a\xff\xfe")
    async with Agent(tmp_path / "agent") as agent:
        with pytest.raises(AgentError, match=re.escape(message)) as refused:
            await agent.enroll(url, "good-token", nats_ca=bad)
        assert agent.identity is None
    assert f"the NATS CA file {bad} (--nats-ca, $EPM_AGENT_NATS_CA)" in str(refused.value)
    assert received == []  # the server was not asked: the token is still good


def test_cli_enroll_takes_the_ca_from_the_environment(
    edge: tuple[str, list[dict[str, Any]]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, _ = edge
    ca = issue_tls_files(tmp_path / "tls").ca
    monkeypatch.setenv("EPM_AGENT_NATS_CA", str(ca))
    state = tmp_path / "agent"
    argv = ["enroll", "--url", url, "--enrollment-token", "good-token", "--state-dir", str(state)]
    assert main([*argv, "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["device_id"] == "d-enrolled-1"
    assert (state / "nats-ca.pem").read_bytes() == ca.read_bytes()

    monkeypatch.setenv("EPM_AGENT_NATS_CA", str(tmp_path / "absent.crt"))
    other = ["--state-dir", str(tmp_path / "other"), "--json"]
    assert main([*argv[:-2], *other]) == 1
    error = orjson.loads(capsys.readouterr().out)["error"]
    assert f"{tmp_path / 'absent.crt'} (--nats-ca, $EPM_AGENT_NATS_CA): cannot read it" in error


async def test_a_server_ca_that_is_not_a_certificate_is_refused_and_nothing_is_kept(
    edge: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    url, _ = edge
    async with Agent(tmp_path / "agent") as agent:
        with pytest.raises(AgentError, match="handed out holds no PEM CA certificate") as bad:
            await agent.enroll(url, "bad-ca-token")
        assert agent.identity is None
    assert "report this to the EPM operator (EPM_PUBLIC_NATS_CA)" in str(bad.value)
    assert not (tmp_path / "agent" / "nats-ca.pem").exists()
