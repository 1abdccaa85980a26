"""``epm-agent``'s surface: one JSON object with --json, errors a person can act on."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from epm_agent.cli import main
from epm_agent.device_key import DeviceKey
from epm_agent.state import Identity, StateDir


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit:
        code = int(exit.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_status_of_an_unenrolled_agent_is_one_json_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, _ = run(capsys, "status", "--state-dir", str(tmp_path / "a"), "--json")

    assert code == 1
    assert out.count("\n") == 1
    error = orjson.loads(out)
    assert list(error) == ["error"]
    assert "not enrolled" in error["error"] and "epm-agent enroll" in error["error"]


def test_without_json_the_error_goes_to_stderr(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = run(capsys, "status", "--state-dir", str(tmp_path / "a"))
    assert (code, out) == (1, "")
    assert err.startswith("error: this agent is not enrolled")


def test_common_options_work_before_the_sub_command_too(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, _ = run(capsys, "--json", "--state-dir", str(tmp_path / "a"), "status")
    assert code == 1 and "error" in orjson.loads(out)


def test_usage_errors_follow_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "request", "--exe", "/bin/true", "--json")
    assert code == 2
    assert "--user" in orjson.loads(out)["error"]


def test_sync_of_an_unenrolled_agent_says_how_to_enroll(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, _ = run(capsys, "sync", "--state-dir", str(tmp_path / "a"), "--json")
    assert code == 1
    assert "epm-agent enroll" in orjson.loads(out)["error"]


def test_simulate_against_no_server_is_one_json_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    argv = ("simulate", "--url", "http://127.0.0.1:9", "--token", "t", "--tenant", "a")
    code, out, _ = run(capsys, *argv, "--devices", "1", "--events", "1", "--json")
    assert code == 1
    assert "cannot reach the EPM server" in orjson.loads(out)["error"]


def test_help_shows_the_whole_surface_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in ("enroll", "request", "status", "offline", "sync", "simulate", "examples:"):
        assert command in out
    code, out, _ = run(capsys, "offline", "--help")
    for command in ("request-code", "respond", "redeem", "generate"):
        assert command in out


def test_offline_status_and_request_answer_from_local_state(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    state_dir = tmp_path / "a"
    with StateDir(state_dir).open() as state:
        DeviceKey.generate().save(state.key_path)
        state.save_identity(
            Identity(
                device_id="d-1",
                tenant="acme",
                hostname="pc",
                server_url="http://127.0.0.1:1",
                nats_url="nats://127.0.0.1:1",
                inbox_prefix="_INBOX.acme.d-1",
                subjects={},
                policy={"app_codes": True},
            )
        )
    common = ("--state-dir", str(state_dir), "--offline", "--json")

    code, out, _ = run(capsys, "status", *common)
    assert code == 0
    assert orjson.loads(out) == {
        "device_id": "d-1",
        "tenant": "acme",
        "online": False,
        "policy": {"app_codes": True},
        "requests": [],
    }
    code, out, _ = run(
        capsys,
        "request",
        "--exe",
        "/x",
        "--sha256",
        "ab" * 32,
        "--user",
        "u",
        "--reason",
        "r",
        *common,
    )
    assert code == 1 and "was not sent" in orjson.loads(out)["error"]
