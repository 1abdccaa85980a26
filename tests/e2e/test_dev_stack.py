"""``epm dev`` end to end: the stack starts, answers, survives nats-server dying, stops clean,
and a second start continues where the first stopped."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import orjson
import pytest
from epm_events.envelope import Envelope
from epm_events.streams import EVENTS

from tests.e2e.devstack import DevProcess, epm, epm_json, process_alive, wait_for

pytestmark = pytest.mark.slow


class Stack:
    def __init__(self, dev: DevProcess, endpoints: dict[str, Any]) -> None:
        self.dev = dev
        self.endpoints = endpoints

    @property
    def http(self) -> str:
        return str(self.endpoints["http"])

    @property
    def nats(self) -> str:
        return str(self.endpoints["nats"])

    @property
    def token(self) -> str:
        return (self.dev.data_dir / "admin-token").read_text().strip()

    def cli(self, *args: str) -> tuple[int, dict[str, Any]]:
        return epm_json(*args, "--url", self.http, "--token", self.token)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    dev = DevProcess(tmp_path_factory.mktemp("dev") / "data", "--port", "0", "--nats-port", "0")
    try:
        endpoints = dev.start().wait_ready()
        yield Stack(dev, endpoints)
        assert dev.stop() == 0
    finally:
        dev.kill_everything()


def test_the_stack_answers_health_and_writes_its_endpoints(stack: Stack) -> None:
    assert stack.http.startswith("http://127.0.0.1:")
    assert stack.nats.startswith("nats://127.0.0.1:")
    assert stack.endpoints["pid"] == stack.dev.proc.pid  # type: ignore[union-attr]
    assert httpx.get(f"{stack.http}/healthz", timeout=5).status_code == 200
    assert httpx.get(f"{stack.http}/readyz", timeout=5).status_code == 200
    assert "EPM is running" in stack.dev.printed()
    assert stack.http in stack.dev.printed()


def test_secrets_are_private_files_in_the_data_dir(stack: Stack) -> None:
    for name in ("admin-token", "master-key"):
        assert (stack.dev.data_dir / name).stat().st_mode & 0o777 == 0o600
    assert stack.token.startswith("epm_")
    assert stack.token not in stack.dev.printed()


def test_the_admin_token_creates_a_tenant_with_the_cli(stack: Stack) -> None:
    code, tenant = stack.cli("tenant", "create", "acme", "--name", "Acme Corp")
    assert (code, tenant) == (0, {"id": "acme", "name": "Acme Corp"})
    code, listed = stack.cli("tenant", "list")
    assert code == 0
    assert {"id": "acme", "name": "Acme Corp"} in listed["items"]


def test_the_cli_finds_the_stack_and_the_token_from_the_data_dir(stack: Stack) -> None:
    code, listed = epm_json("tenant", "list", "--data-dir", str(stack.dev.data_dir))
    assert code == 0, listed
    assert "items" in listed


def test_no_token_is_refused_with_401(stack: Stack) -> None:
    answer = httpx.get(f"{stack.http}/v1/tenants", timeout=5)
    assert answer.status_code == 401
    assert answer.headers["content-type"].startswith("application/problem+json")
    code, error = epm_json("tenant", "list", "--url", stack.http, "--data-dir", "/nonexistent")
    assert code != 0
    assert "--token" in error["error"] and error["status"] == 401


def test_a_bad_tenant_id_is_a_problem_the_user_can_read(stack: Stack) -> None:
    answer = httpx.post(
        f"{stack.http}/v1/tenants",
        json={"id": "Not A Valid Id!", "name": "x"},
        headers={"Authorization": f"Bearer {stack.token}"},
        timeout=5,
    )
    assert 400 <= answer.status_code < 500
    assert answer.headers["content-type"].startswith("application/problem+json")
    problem = answer.json()
    assert {"type", "title", "status", "detail"} <= problem.keys()
    code, error = stack.cli("tenant", "create", "Not A Valid Id!", "--name", "x")
    assert code != 0
    assert error["error"] == problem["detail"]


def test_tokens_are_issued_and_revoked_with_the_cli(stack: Stack) -> None:
    stack.cli("tenant", "create", "initech", "--name", "Initech")
    code, issued = stack.cli(
        "token", "issue", "--role", "tenant_technician", "--tenant", "initech", "--name", "Ann"
    )
    assert code == 0, issued
    assert {"id", "token"} <= issued.keys()
    code, _ = epm_json("tenant", "list", "--url", stack.http, "--token", issued["token"])
    assert code == 0  # the new token works...
    code, _ = stack.cli("token", "revoke", issued["id"])
    assert code == 0
    answer = httpx.get(
        f"{stack.http}/v1/tenants",
        headers={"Authorization": f"Bearer {issued['token']}"},
        timeout=5,
    )
    assert answer.status_code == 401  # ...until it is revoked


async def test_every_event_is_a_cloudevent_whose_msg_id_is_its_id(stack: Stack) -> None:
    stack.cli("tenant", "create", "globex", "--name", "Globex")
    nc = await nats.connect(stack.nats, user_credentials=stack.endpoints["nats_admin_creds"])
    try:
        js = nc.jetstream()
        state = (await js.stream_info(EVENTS.name)).state
        assert state.messages > 0
        names = []
        for seq in range(state.first_seq, state.last_seq + 1):
            msg = await js.get_msg(EVENTS.name, seq)
            envelope = Envelope.model_validate_json(msg.data or b"")
            assert envelope.specversion == "1.0"
            assert (msg.headers or {}).get("Nats-Msg-Id") == envelope.id, msg.subject
            assert msg.subject.endswith(f".{envelope.event_name}")
            names.append(envelope.event_name)
    finally:
        await nc.close()
    assert "TenantCreated" in names


def test_a_second_epm_dev_on_the_same_data_dir_is_refused(stack: Stack) -> None:
    second = DevProcess(stack.dev.data_dir, name="second").start()
    code, printed = second.run_to_exit()
    assert code != 0
    assert f"another epm dev (pid {stack.dev.proc.pid})" in printed  # type: ignore[union-attr]
    assert stack.dev.endpoints() is not None  # the first one is untouched


@pytest.mark.parametrize("flag", ["--port", "--nats-port"])
def test_a_busy_port_stops_start_up_naming_the_flag(
    stack: Stack, tmp_path: Path, flag: str
) -> None:
    busy = stack.http if flag == "--port" else stack.nats
    port = busy.rsplit(":", 1)[1]
    other = "--nats-port" if flag == "--port" else "--port"
    refused = DevProcess(tmp_path / "data", flag, port, other, "0", name="busy").start()
    code, printed = refused.run_to_exit()
    assert code != 0
    assert f"port {port} is in use; choose another with {flag}" in printed
    assert not (tmp_path / "data" / "endpoints.json").exists()
    assert not (tmp_path / "data" / "logs" / "nats.log").exists()  # nothing was started


def test_nats_server_yields_to_the_services_and_they_do_not(stack: Stack) -> None:
    """The stack's nats-server runs as SCHED_BATCH (epm_service.natsserver.run_as_batch): its
    wake-ups wait for a running service instead of preempting it. The services do not."""
    endpoints = stack.dev.endpoints()
    assert endpoints is not None
    processes = endpoints["processes"]
    assert os.sched_getscheduler(processes["nats-server"]) == os.SCHED_BATCH
    assert os.sched_getscheduler(processes["request-svc"]) == os.SCHED_OTHER


def test_a_killed_nats_server_is_restarted_and_the_stack_answers_again(stack: Stack) -> None:
    before = stack.dev.endpoints()
    assert before is not None
    old_pid = before["processes"]["nats-server"]
    os.kill(old_pid, signal.SIGKILL)

    def restarted() -> dict[str, Any] | None:
        now = stack.dev.endpoints()
        return now if now and now["processes"]["nats-server"] != old_pid else None

    after = wait_for("nats-server to be restarted", restarted)
    assert process_alive(after["processes"]["nats-server"])
    wait_for("the restart to be shown", lambda: "nats-server restarted" in stack.dev.printed())
    restart_logged = (stack.dev.data_dir / "logs" / "dev.log").read_text()
    assert "nats-server exited unexpectedly (killed by SIGKILL)" in restart_logged

    def answers() -> bool:
        code, created = stack.cli("tenant", "create", "hooli", "--name", "Hooli")
        return code == 0 and created.get("id") == "hooli"

    def listed() -> bool:
        code, answer = stack.cli("tenant", "list")
        return code == 0 and "hooli" in {t["id"] for t in answer["items"]}

    wait_for("the stack to create a tenant again", answers, deadline=90)
    wait_for("the new tenant to be listed", listed, deadline=30)


def test_stop_leaves_nothing_running_and_a_second_start_continues(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = DevProcess(data, "--port", "0", "--nats-port", "0", name="first")
    second = DevProcess(data, "--port", "0", "--nats-port", "0", name="second")
    try:
        endpoints = first.start().wait_ready()
        token = (data / "admin-token").read_text()
        ports = orjson.loads((data / "ports.json").read_bytes())
        assert endpoints["http"] == f"http://127.0.0.1:{ports['http']}"
        assert endpoints["nats"] == f"nats://127.0.0.1:{ports['nats']}"
        code, _ = epm_json(
            "tenant", "create", "umbrella", "--name", "Umbrella", "--data-dir", str(data)
        )
        assert code == 0
        children = set(endpoints["processes"].values())
        assert len(children) == 6

        assert first.stop() == 0
        still_running = [pid for pid in children if process_alive(pid)]
        assert still_running == [], f"children left running: {still_running}"
        assert not (data / "endpoints.json").exists()
        assert "stopped" in first.printed()

        again = second.start().wait_ready()
        assert (again["http"], again["nats"]) == (endpoints["http"], endpoints["nats"])
        assert (data / "admin-token").read_text() == token
        code, listed = epm_json("tenant", "list", "--data-dir", str(data))
        assert code == 0, listed
        assert {"id": "umbrella", "name": "Umbrella"} in listed["items"]
        assert second.stop() == 0
        assert [pid for pid in second.pids if process_alive(pid)] == []
    finally:
        first.kill_everything()
        second.kill_everything()


def test_epm_dev_explains_itself() -> None:
    done = epm("dev", "--help")
    assert done.returncode == 0
    for words in ("--data-dir", "--port", "--nats-port", "epm dev --data-dir"):
        assert words in done.stdout


def test_children_die_with_a_killed_epm_dev_and_the_next_start_works(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = DevProcess(data, "--port", "0", "--nats-port", "0", name="first")
    second = DevProcess(data, name="second")
    try:
        children = set(first.start().wait_ready()["processes"].values())
        assert first.proc is not None
        first.proc.kill()
        first.proc.wait()
        wait_for(
            "every child of the killed epm dev to exit",
            lambda: not [pid for pid in children if process_alive(pid)],
            deadline=30,
        )
        again = second.start().wait_ready()  # the lock died with it; a stale file is replaced
        assert again["pid"] == second.proc.pid  # type: ignore[union-attr]
        assert second.stop() == 0
    finally:
        first.kill_everything()
        second.kill_everything()
