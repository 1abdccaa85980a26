"""A service that cannot start says why in one sentence that names the setting or the step,
and exits 1: no traceback for an operator to read through (``epm serve <name>``, as the
container entrypoint runs it)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from epm_service.bus import Bus
from epm_service.settings import Settings

from tests.conftest import delete_streams


async def serve(name: str, settings: Settings, tmp_path: Path, **env: str) -> tuple[int, str]:
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "epm_cli.main", "serve", name],
        env={
            **os.environ,
            "EPM_NATS_URL": settings.nats_url,
            "EPM_DATA_DIR": str(tmp_path),
            "EPM_HEALTH_PORT": "0",
            **env,
        },
        capture_output=True,
        timeout=60,
    )
    return result.returncode, result.stderr.decode()


def one_sentence(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    [line] = [line for line in stderr.splitlines() if "cannot start" in line]
    return line


async def test_a_service_without_streams_says_to_apply_them(
    bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    await delete_streams(bus)
    code, stderr = await serve("approval-svc", settings, tmp_path)
    assert code == 1
    assert "epm streams apply" in one_sentence(stderr)


async def test_an_invalid_setting_is_named_without_its_value(
    settings: Settings, tmp_path: Path
) -> None:
    code, stderr = await serve("request-svc", settings, tmp_path, EPM_REQUEST_TTL="soon")
    assert code == 1
    line = one_sentence(stderr)
    assert "EPM_REQUEST_TTL" in line and "soon" not in line.split("EPM_REQUEST_TTL", 1)[0]


async def test_an_unreadable_creds_file_names_epm_nats_creds(
    settings: Settings, tmp_path: Path
) -> None:
    code, stderr = await serve(
        "audit-svc", settings, tmp_path, EPM_NATS_CREDS=str(tmp_path / "missing.creds")
    )
    assert code == 1
    line = one_sentence(stderr)
    assert "EPM_NATS_CREDS" in line and "missing.creds" in line


async def test_notify_svc_without_the_master_key_says_so(
    bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "EPM_MASTER_KEY"}
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "epm_cli.main", "serve", "notify-svc"],
        env={
            **env,
            "EPM_NATS_URL": settings.nats_url,
            "EPM_DATA_DIR": str(tmp_path),
            "EPM_HEALTH_PORT": "0",
        },
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "EPM_MASTER_KEY" in one_sentence(result.stderr.decode())
