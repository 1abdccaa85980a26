"""epm dev's data dir: secrets created once and private, atomic files, one epm dev per dir."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from epm_cli.dev.datadir import DataDir, write_json_atomically
from epm_cli.dev.lock import DataDirLocked, DevLock
from epm_cli.technician.api import FALLBACK_URL, default_token, default_url


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_admin_token_is_created_once_private_and_kept(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    token = data.admin_token()
    assert token.startswith("epm_") and len(token) > 40
    assert data.admin_token_file.read_text() == token + "\n"
    assert mode(data.admin_token_file) == 0o600
    assert data.admin_token() == token


def test_the_master_key_is_32_random_bytes_private_and_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EPM_MASTER_KEY", raising=False)
    data = DataDir(tmp_path)
    key = data.master_key()
    assert len(base64.b64decode(key)) == 32
    assert mode(data.master_key_file) == 0o600
    assert data.master_key() == key


def test_a_master_key_from_the_environment_wins_and_is_not_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EPM_MASTER_KEY", "from-the-environment")
    data = DataDir(tmp_path)
    assert data.master_key() == "from-the-environment"
    assert not data.master_key_file.exists()


def test_json_is_replaced_atomically_without_leftovers(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.json"
    write_json_atomically(path, {"http": "http://127.0.0.1:1"})
    write_json_atomically(path, {"http": "http://127.0.0.1:2"})
    assert DataDir(tmp_path).read_endpoints() == {"http": "http://127.0.0.1:2"}
    assert [p.name for p in tmp_path.iterdir()] == ["endpoints.json"]


def test_a_second_lock_on_the_data_dir_names_the_holder(tmp_path: Path) -> None:
    first = DevLock(tmp_path / "dev.lock")
    first.acquire()
    try:
        with pytest.raises(DataDirLocked) as caught:
            DevLock(tmp_path / "dev.lock").acquire()
        assert f"pid {os.getpid()}" in str(caught.value)
        assert "--data-dir" in str(caught.value)
    finally:
        first.release()
    again = DevLock(tmp_path / "dev.lock")
    again.acquire()
    again.release()


def test_the_cli_finds_the_running_stack_and_its_token(tmp_path: Path) -> None:
    assert default_url(tmp_path) == FALLBACK_URL
    assert default_token(tmp_path) is None
    data = DataDir(tmp_path)
    write_json_atomically(data.endpoints_file, {"http": "http://127.0.0.1:4711", "pid": 1})
    token = data.admin_token()
    assert default_url(tmp_path) == "http://127.0.0.1:4711"
    assert default_token(tmp_path) == token
