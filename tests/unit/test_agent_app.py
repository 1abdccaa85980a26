"""What is being elevated: file name, path and SHA-256 from the executable itself."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from epm_agent.elevation import describe_app, sha256_of_file
from epm_agent.errors import AgentError


def test_sha256_of_a_file_matches_hashlib(tmp_path: Path) -> None:
    exe = tmp_path / "big.bin"
    content = bytes(range(256)) * 9000  # more than one read chunk
    exe.write_bytes(content)
    assert sha256_of_file(exe) == hashlib.sha256(content).hexdigest()


def test_an_existing_exe_is_hashed_and_named_from_its_path(tmp_path: Path) -> None:
    exe = tmp_path / "setup.exe"
    exe.write_bytes(b"MZ")
    app = describe_app(str(exe), publisher="Acme", app_name="Acme Setup")

    assert app.sha256 == hashlib.sha256(b"MZ").hexdigest()
    assert (app.file_name, app.path) == ("setup.exe", str(exe.resolve()))
    assert (app.publisher, app.app_name) == ("Acme", "Acme Setup")


def test_an_exe_not_on_this_machine_needs_its_sha256() -> None:
    app = describe_app("C:\\Tools\\setup.exe", sha256="AB" * 32)
    assert (app.file_name, app.sha256, app.path) == ("setup.exe", "ab" * 32, "C:\\Tools\\setup.exe")

    with pytest.raises(AgentError, match="give --sha256"):
        describe_app("/no/such/file")
    with pytest.raises(AgentError, match="64 hexadecimal digits"):
        describe_app("/no/such/file", sha256="xyz")


def test_a_sha256_that_contradicts_the_file_is_refused(tmp_path: Path) -> None:
    exe = tmp_path / "tool"
    exe.write_bytes(b"x")
    with pytest.raises(AgentError, match="does not match"):
        describe_app(str(exe), sha256="00" * 32)
