"""``epm dev``: flags and environment in, a running stack out, a short summary on the terminal."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import orjson
import typer

from epm_cli.dev.datadir import DataDir
from epm_cli.dev.lock import DataDirLocked, DevLock

if TYPE_CHECKING:
    from epm_cli.dev.stack import StackConfig


def parse_duration_flag(value: str, flag: str) -> float:
    """A duration flag (``30s``, ``10m``, ``4d``) in seconds; BadParameter names the flag."""
    from epm_service.settings import parse_duration

    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=flag) from None
    if seconds <= 0:
        raise typer.BadParameter(f"must be more than 0, got {value!r}", param_hint=flag)
    return seconds


class Console:
    """Short lines on the terminal; the same, structured, in <data-dir>/logs/dev.log."""

    def __init__(self, log_file: Path) -> None:
        self.log_file = log_file

    def __call__(self, level: str, message: str) -> None:
        typer.echo(f"epm dev: {message}", err=level == "error")
        line = {"time": datetime.now(UTC).isoformat(), "level": level, "msg": message}
        with open(self.log_file, "ab") as f:
            f.write(orjson.dumps(line) + b"\n")


def dev(
    data_dir: Annotated[
        Path,
        typer.Option(envvar="EPM_DATA_DIR", help="JetStream store, SQLite files, keys and logs."),
    ] = Path(".epm"),
    port: Annotated[
        int | None,
        typer.Option(
            "--port",
            envvar="EPM_HTTP_PORT",
            min=0,
            max=65535,
            help="HTTP port of the gateway (default 8080, or the remembered one); 0: a free one (remembered).",
            show_default=False,
        ),
    ] = None,
    nats_port: Annotated[
        int | None,
        typer.Option(
            "--nats-port",
            envvar="EPM_NATS_PORT",
            min=0,
            max=65535,
            help="nats-server port (default 4222, or the remembered one); 0: a free one (remembered).",
            show_default=False,
        ),
    ] = None,
    request_ttl: Annotated[
        str | None,
        typer.Option(
            envvar="EPM_REQUEST_TTL",
            help="How long a request stays open before it expires (30s, 10m, 4d) (default 4d).",
            show_default=False,
        ),
    ] = None,
    startup_timeout: Annotated[
        str, typer.Option(help="How long to wait for every process to be ready.")
    ] = "120s",
) -> None:
    """Start the whole stack on this machine: nats-server, streams, services, gateway.

    Ports are remembered in the data dir and reused on later starts; the
    bootstrap msp_admin token is in <data-dir>/admin-token; logs are in
    <data-dir>/logs. Ctrl-C stops everything.

    Examples:

    epm dev

    epm dev --data-dir /tmp/epm --port 0 --nats-port 0

    EPM_REQUEST_TTL=10m epm dev
    """
    # The stack's imports (NATS, pydantic settings) stay out of every other epm command.
    from epm_cli.dev.ports import HTTP, NATS, PortInUse, resolve_ports
    from epm_cli.dev.stack import StackConfig, run_stack

    timeout = parse_duration_flag(startup_timeout, "--startup-timeout")
    extra_env: dict[str, str] = {}
    if request_ttl is not None:
        parse_duration_flag(request_ttl, "--request-ttl")
        extra_env["EPM_REQUEST_TTL"] = request_ttl

    # Library warnings (a NATS reconnect in streams apply) belong in logs, not on the terminal.
    logging.getLogger().addHandler(logging.NullHandler())
    data = DataDir(data_dir.resolve())
    data.prepare()
    lock = DevLock(data.lock_file)
    try:
        lock.acquire()
    except DataDirLocked as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    try:
        try:
            ports = resolve_ports(data.ports_file, {HTTP.key: port, NATS.key: nats_port})
        except PortInUse as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        config = StackConfig(
            data=data,
            http_port=ports[HTTP.key],
            nats_port=ports[NATS.key],
            startup_timeout=timeout,
            extra_env=extra_env,
        )
        console = Console(data.log_file("dev"))
        console("info", f"data dir {data.root}; logs in {data.logs}")
        code = asyncio.run(run_stack(config, console, lambda: print_summary(config)))
    finally:
        lock.release()
    raise typer.Exit(code)


def print_summary(config: StackConfig) -> None:
    typer.echo(
        "\nEPM is running.\n"
        f"  console  {config.http_url}/\n"
        f"  nats     {config.nats_url}\n"
        f"  token    {config.data.admin_token_file} (msp_admin; e.g. epm tenant list)\n"
        f"  logs     {config.data.logs}/\n"
        "Press Ctrl-C to stop.\n"
    )
