"""epm dev's port memory: defaults, 0 for a free port, remembered ports, busy ports."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from epm_cli.dev.ports import (
    DEFAULT_HTTP_PORT,
    HTTP,
    NATS,
    PortInUse,
    choose_port,
    read_ports,
    resolve_ports,
)


@pytest.fixture
def listening() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_no_flag_and_nothing_remembered_uses_the_default() -> None:
    assert choose_port(None, None, DEFAULT_HTTP_PORT) == DEFAULT_HTTP_PORT


def test_zero_with_nothing_remembered_asks_for_a_free_port() -> None:
    assert choose_port(0, None, DEFAULT_HTTP_PORT) is None


def test_zero_reuses_the_remembered_port() -> None:
    assert choose_port(0, 41234, DEFAULT_HTTP_PORT) == 41234


def test_no_flag_reuses_the_remembered_port() -> None:
    assert choose_port(None, 41234, DEFAULT_HTTP_PORT) == 41234


def test_an_explicit_port_overrides_the_remembered_one() -> None:
    assert choose_port(9090, 41234, DEFAULT_HTTP_PORT) == 9090


def test_free_ports_are_remembered_and_reused_on_the_next_start(tmp_path: Path) -> None:
    ports_file = tmp_path / "ports.json"
    first = resolve_ports(ports_file, {"http": 0, "nats": 0})
    assert first["http"] != first["nats"]
    assert read_ports(ports_file) == first
    assert resolve_ports(ports_file, {"http": 0, "nats": 0}) == first
    assert resolve_ports(ports_file, {"http": None, "nats": None}) == first


def test_an_explicit_port_is_remembered_in_place_of_the_old_one(tmp_path: Path) -> None:
    ports_file = tmp_path / "ports.json"
    first = resolve_ports(ports_file, {"http": 0, "nats": 0})
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    explicit = int(probe.getsockname()[1])
    probe.close()
    assert resolve_ports(ports_file, {"http": explicit, "nats": 0})["http"] == explicit
    assert read_ports(ports_file) == {"http": explicit, "nats": first["nats"]}


def test_a_busy_port_names_the_port_and_the_flag(tmp_path: Path, listening: int) -> None:
    with pytest.raises(PortInUse) as caught:
        resolve_ports(tmp_path / "ports.json", {"http": listening, "nats": 0})
    message = str(caught.value)
    assert f"port {listening} is in use" in message
    assert "--port" in message and "--port 0" in message
    assert not (tmp_path / "ports.json").exists()


def test_a_busy_remembered_nats_port_names_the_nats_flag(tmp_path: Path, listening: int) -> None:
    ports_file = tmp_path / "ports.json"
    ports_file.write_bytes(orjson.dumps({"http": 1, "nats": listening}))
    with pytest.raises(PortInUse) as caught:
        resolve_ports(ports_file, {"http": 0, "nats": None}, flags=(NATS,))
    assert "--nats-port" in str(caught.value)
    assert "remembered" in str(caught.value)


def test_a_damaged_ports_file_is_ignored(tmp_path: Path) -> None:
    ports_file = tmp_path / "ports.json"
    ports_file.write_text("{not json")
    assert read_ports(ports_file) == {}
    ports_file.write_text('{"http": "eighty", "nats": 70000}')
    assert read_ports(ports_file) == {}


def test_flags_name_what_the_user_types() -> None:
    assert (HTTP.flag, NATS.flag) == ("--port", "--nats-port")
