"""``epm`` usage errors follow --json: one {"error": ...} object on stdout and exit 2;
without --json, Typer's usual message on stderr. Plus the help texts that must read right."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from epm_cli.main import app
from epm_cli.technician.api import Api
from typer.testing import CliRunner

ENV = {"EPM_URL": "http://gateway.test", "COLUMNS": "200"}


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), env=ENV)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["enrollment-token", "create", "acme", "--json"], "Missing option '--tenant'"),
        (["device", "list", "--json"], "Missing option '--tenant'"),
        (["--json", "tenant", "create"], "No such option: --json"),
        (["tenant", "create", "--json"], "Missing argument 'ID'"),
        (["request", "list", "--limit", "0", "--json"], "--limit"),
        (["request", "lst", "--json"], "No such command 'lst'"),
        (["audit", "list", "--json", "--bogus"], "No such option: --bogus"),
    ],
)
def test_with_json_a_usage_error_is_one_error_object_and_exit_2(args: list[str], says: str) -> None:
    done = invoke(*args)
    assert done.exit_code == 2
    assert done.stderr == ""
    [line] = done.stdout.splitlines()
    answer = orjson.loads(line)
    assert list(answer) == ["error"]
    assert says in answer["error"]


def test_the_json_usage_error_names_the_command_and_its_help() -> None:
    error = orjson.loads(invoke("device", "list", "--json").stdout)["error"]
    assert error.startswith("epm device list: ")
    assert "epm device list --help" in error


def test_without_json_a_usage_error_is_typers_message_on_stderr() -> None:
    done = invoke("device", "list")
    assert done.exit_code == 2
    assert done.stdout == ""
    assert "Missing option" in done.stderr and "--tenant" in done.stderr


def test_errors_of_the_command_itself_are_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object, **__: object) -> Any:
        from epm_cli.technician.api import ApiError

        raise ApiError("tenant 'nope' not found", 404)

    monkeypatch.setattr(Api, "call", refuse)
    done = invoke("device", "list", "--tenant", "nope", "--json")
    assert done.exit_code == 1
    assert orjson.loads(done.stdout) == {"error": "tenant 'nope' not found", "status": 404}


def test_tenant_create_help_shows_the_id_pattern_whole() -> None:
    assert "[a-z0-9][a-z0-9-]{0,62}" in invoke("tenant", "create", "--help").stdout


def test_token_revoke_help_shows_an_id_of_the_real_shape() -> None:
    out = invoke("token", "revoke", "--help").stdout
    assert "epm token revoke tok-" in out
    assert "tok_" not in out


def test_events_tail_help_says_msp_wide_integrators_may_choose_a_tenant() -> None:
    out = " ".join(invoke("events", "tail", "--help").stdout.split())
    assert "One tenant, for MSP principals and MSP-wide integrators" in out
