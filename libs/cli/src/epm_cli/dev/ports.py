"""Which ports ``epm dev`` listens on, remembered in the data dir so agents keep working.

``--port``/``--nats-port``: not given -> the remembered port, else the default;
``0`` -> the remembered port, else a free one; any other value wins and is
remembered.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import orjson
from epm_service.natsserver import free_port, port_is_free

from epm_cli.dev.datadir import write_json_atomically

DEFAULT_HTTP_PORT = 8080
DEFAULT_NATS_PORT = 4222


class PortInUse(RuntimeError):
    pass


@dataclass(frozen=True)
class PortFlag:
    key: str  # the name in ports.json
    flag: str  # the option that changes it
    default: int


HTTP = PortFlag("http", "--port", DEFAULT_HTTP_PORT)
NATS = PortFlag("nats", "--nats-port", DEFAULT_NATS_PORT)


def choose_port(given: int | None, remembered: int | None, default: int) -> int | None:
    """The port to use, or ``None`` for "pick a free one"."""
    if given:
        return given
    if remembered:
        return remembered
    return None if given == 0 else default


def read_ports(path: Path) -> dict[str, int]:
    try:
        loaded = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    if not isinstance(loaded, dict):
        return {}
    return {k: v for k, v in loaded.items() if isinstance(v, int) and 0 < v < 65536}


def busy_message(port: int, flag: PortFlag, remembered: bool, ports_file: Path) -> str:
    where = f" (remembered in {ports_file})" if remembered else ""
    return (
        f"port {port}{where} is in use; choose another with {flag.flag} "
        f"(or {flag.flag} 0 for a free one)"
    )


def resolve_ports(
    ports_file: Path, given: dict[str, int | None], flags: tuple[PortFlag, ...] = (HTTP, NATS)
) -> dict[str, int]:
    """Pick, check and remember every port; raises PortInUse naming the flag to change."""
    remembered = read_ports(ports_file)
    chosen: dict[str, int] = {}
    for flag in flags:
        port = choose_port(given.get(flag.key), remembered.get(flag.key), flag.default)
        if port is None:
            port = free_port()
            while port in chosen.values():
                port = free_port()
        elif not port_is_free(port):
            was_remembered = not given.get(flag.key) and remembered.get(flag.key) == port
            raise PortInUse(busy_message(port, flag, was_remembered, ports_file))
        chosen[flag.key] = port
    write_json_atomically(ports_file, {**remembered, **chosen})
    return chosen
