"""The Dockerfile lints clean and its one entrypoint runs any EPM process by name.

There is no Docker engine here: the entrypoint script runs as is, with a stub `epm`
first on PATH that records what it was asked to run (and, for the unknown-name case,
with the real `epm`).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from epm_cli.services import SERVICES

from tests.unit.test_deploy_render import ROOT, VENV_BIN, tool

DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINT = ROOT / "deploy" / "docker" / "entrypoint.sh"


@pytest.mark.parametrize(
    "command",
    [
        ["hadolint", "--failure-threshold", "info", str(DOCKERFILE)],
        ["shellcheck", "--shell=sh", str(ENTRYPOINT)],
    ],
    ids=["hadolint-dockerfile", "shellcheck-entrypoint"],
)
def test_linters_pass(command: list[str]) -> None:
    result = subprocess.run(
        [tool(command[0]), *command[1:]], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_is_pinned_non_root_and_has_no_build_tools() -> None:
    text = DOCKERFILE.read_text()
    bases = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    assert len(bases) >= 2, "multi-stage build expected"
    for base in bases:
        assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base), base
    final = text[text.rindex("\nFROM ") :]
    users = re.findall(r"^USER\s+(\d+)(?::(\d+))?$", final, re.MULTILINE)
    assert users and int(users[-1][0]) >= 10001
    assert "uv sync --frozen --no-dev --no-editable" in text
    # uv lives in the builder only; the final stage gets the virtualenv and the script
    assert "uv" not in re.sub(r"#.*", "", final).split()
    assert "COPY --from=builder /app/.venv /app/.venv" in final
    assert 'ENTRYPOINT ["/app/entrypoint.sh"]' in final


def test_the_entrypoint_is_executable() -> None:
    assert os.access(ENTRYPOINT, os.X_OK)


@pytest.fixture
def stub_epm(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A PATH whose `epm` writes its arguments, one a line, to a file."""
    record = tmp_path / "args"
    stub = tmp_path / "bin" / "epm"
    stub.parent.mkdir()
    stub.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{record}"\n')
    stub.chmod(0o755)
    return {**os.environ, "PATH": f"{stub.parent}:/usr/bin:/bin"}, record


def run_entrypoint(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ENTRYPOINT), *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


@pytest.mark.parametrize("name", list(SERVICES))
def test_a_service_name_runs_epm_serve(name: str, stub_epm: tuple[dict[str, str], Path]) -> None:
    env, record = stub_epm
    result = run_entrypoint([name], env)
    assert result.returncode == 0, result.stderr
    assert record.read_text().splitlines() == ["serve", name]


def test_streams_apply_runs_epm_streams_apply(stub_epm: tuple[dict[str, str], Path]) -> None:
    env, record = stub_epm
    result = run_entrypoint(["streams-apply", "--json"], env)
    assert result.returncode == 0, result.stderr
    assert record.read_text().splitlines() == ["streams", "apply", "--json"]


def test_epm_passes_any_command_through(stub_epm: tuple[dict[str, str], Path]) -> None:
    env, record = stub_epm
    result = run_entrypoint(["epm", "events", "asyncapi"], env)
    assert result.returncode == 0, result.stderr
    assert record.read_text().splitlines() == ["events", "asyncapi"]


def test_an_unknown_name_is_refused_with_the_real_names() -> None:
    env = {**os.environ, "PATH": f"{VENV_BIN}:/usr/bin:/bin"}
    result = run_entrypoint(["gatewya"], env)
    assert result.returncode != 0
    assert "unknown service 'gatewya'" in result.stderr
    for name in SERVICES:
        assert name in result.stderr


@pytest.mark.parametrize("args", [[], ["--gateway"], ["gateway", "--port", "1"]])
def test_malformed_calls_are_refused_before_epm_runs(
    args: list[str], stub_epm: tuple[dict[str, str], Path]
) -> None:
    env, record = stub_epm
    result = run_entrypoint(args, env)
    assert result.returncode == 64
    assert "entrypoint.sh:" in result.stderr
    assert not record.exists()


def test_help_shows_usage(stub_epm: tuple[dict[str, str], Path]) -> None:
    env, _ = stub_epm
    result = run_entrypoint(["--help"], env)
    assert result.returncode == 0
    assert "streams-apply" in result.stdout
