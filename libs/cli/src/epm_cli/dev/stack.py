"""The stack ``epm dev`` runs: nats-server, the streams, every service and the gateway.

Start-up order: nats-server, ``streams apply``, the secrets, the services,
the gateway; ready when every child answers its /readyz. Stop order: the
gateway, the services, nats-server last.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
from epm_service.bus import connect
from epm_service.natsserver import free_port, nats_command
from epm_service.settings import Settings
from epm_service.streams import apply_streams

from epm_cli.dev.children import Child, ChildSpec, Report
from epm_cli.dev.datadir import DataDir, write_json_atomically
from epm_cli.nats_auth import ADMIN, AuthFiles, write_auth_files
from epm_cli.services import SERVICES

GATEWAY = "gateway"
NATS = "nats-server"
BACKEND_SERVICES = tuple(name for name in SERVICES if name != GATEWAY)


class StartupFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class StackConfig:
    data: DataDir
    http_port: int
    nats_port: int
    startup_timeout: float
    extra_env: dict[str, str]

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.nats_port}"


def http_ready(url: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        try:
            async with httpx.AsyncClient(timeout=1.0) as client:
                return (await client.get(url)).status_code == 200
        except httpx.HTTPError:
            return False

    return check


def nats_ready(port: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        try:
            async with asyncio.timeout(1.0):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except (OSError, TimeoutError):
            return False
        try:
            async with asyncio.timeout(1.0):
                return (await reader.read(4)).startswith(b"INFO")
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()

    return check


class DevStack:
    def __init__(self, config: StackConfig, report: Report) -> None:
        self.config = config
        self.report = report
        self.children: dict[str, Child] = {}
        self.ready = False
        self.auth_files = AuthFiles(config.data.nats_auth)

    # -- what each child is --------------------------------------------------

    def _service_env(self, name: str, health_port: int) -> dict[str, str]:
        c = self.config
        auth = self.auth_files
        issuer = auth.issuer(name)
        return {
            **os.environ,
            **c.extra_env,
            "EPM_NATS_URL": c.nats_url,
            "EPM_DATA_DIR": str(c.data.root),
            "EPM_HEALTH_PORT": str(health_port),
            "EPM_HTTP_HOST": "127.0.0.1",
            "EPM_HTTP_PORT": str(c.http_port),
            "EPM_PUBLIC_URL": c.http_url,
            "EPM_MASTER_KEY": c.data.master_key(),
            "EPM_BOOTSTRAP_TOKEN_FILE": str(c.data.admin_token_file),
            "EPM_NATS_CREDS": str(auth.creds(name)),
            "EPM_NATS_ISSUER": str(issuer) if issuer else "",
            "PYTHONUNBUFFERED": "1",
        }

    def nats_spec(self) -> ChildSpec:
        c = self.config
        return ChildSpec(
            name=NATS,
            # operator mode: every client needs a user JWT (epm_cli.nats_auth)
            argv=nats_command(
                c.nats_port, c.data.nats_store, extra=["-c", str(self.auth_files.resolver_conf)]
            ),
            log_file=c.data.log_file("nats"),
            ready=nats_ready(c.nats_port),
            death_signal=signal.SIGTERM,  # lets it close its JetStream store cleanly
            batch_scheduling=True,  # beside the services on one machine: see run_as_batch
        )

    def service_spec(self, name: str) -> ChildSpec:
        health_port = free_port()
        ready_url = (
            f"{self.config.http_url}/readyz"
            if name == GATEWAY
            else f"http://127.0.0.1:{health_port}/readyz"
        )
        return ChildSpec(
            name=name,
            argv=[sys.executable, "-m", "epm_cli.main", "serve", name],
            log_file=self.config.data.log_file(name),
            env=self._service_env(name, health_port),
            ready=http_ready(ready_url),
        )

    # -- life cycle ----------------------------------------------------------

    async def _launch(self, spec: ChildSpec) -> Child:
        child = Child(spec, self.report)
        child.on_started = self._on_child_started
        self.children[spec.name] = child
        await child.start()
        return child

    def _on_child_started(self, child: Child) -> None:
        if self.ready:  # a restart: keep the PIDs in endpoints.json current
            self.write_endpoints()

    async def _wait_ready(self, children: list[Child], deadline: float) -> None:
        results = await asyncio.gather(*(c.wait_ready(deadline) for c in children))
        late = [c for c, ok in zip(children, results, strict=True) if not ok]
        if late:
            raise StartupFailed(
                "not ready within "
                f"{self.config.startup_timeout:g}s: "
                + ", ".join(f"{c.name} (see {c.spec.log_file})" for c in late)
            )

    async def start(self) -> None:
        c = self.config
        c.data.prepare()
        deadline = time.monotonic() + c.startup_timeout
        self.auth_files = write_auth_files(c.data.nats_auth, str(c.data.nats_store / "jwt"))
        nats = await self._launch(self.nats_spec())
        await self._wait_ready([nats], deadline)
        self.report("info", f"nats-server ready on {c.nats_url} (JetStream in {c.data.nats_store})")
        await self._apply_streams()
        c.data.master_key()
        c.data.admin_token()  # before the gateway starts: it registers this token
        services = [await self._launch(self.service_spec(name)) for name in BACKEND_SERVICES]
        gateway = await self._launch(self.service_spec(GATEWAY))
        await self._wait_ready([*services, gateway], deadline)
        self.ready = True
        self.write_endpoints()

    async def _apply_streams(self) -> None:
        settings = Settings(
            nats_url=self.config.nats_url, nats_creds=str(self.auth_files.creds(ADMIN))
        )
        bus = await connect(settings, name="epm-dev", max_reconnect_attempts=3)
        try:
            done = await apply_streams(bus.js, settings.stream_replicas)
        finally:
            await bus.close()
        self.report("info", "streams: " + ", ".join(f"{n} {a}" for n, a in done))

    async def stop(self) -> None:
        self.ready = False
        with contextlib.suppress(FileNotFoundError):
            self.config.data.endpoints_file.unlink()
        order = [[GATEWAY], list(BACKEND_SERVICES), [NATS]]
        for group in order:
            await asyncio.gather(*(self.children[n].stop() for n in group if n in self.children))

    def endpoints(self) -> dict[str, object]:
        return {
            "http": self.config.http_url,
            "nats": self.config.nats_url,
            "nats_admin_creds": str(self.auth_files.creds(ADMIN)),
            "pid": os.getpid(),
            "processes": {name: child.pid for name, child in self.children.items()},
        }

    def write_endpoints(self) -> None:
        write_json_atomically(self.config.data.endpoints_file, self.endpoints())


async def run_stack(config: StackConfig, report: Report, on_ready: Callable[[], None]) -> int:
    """Start, serve until SIGINT/SIGTERM, stop. Returns the exit code."""
    stack = DevStack(config, report)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    starting = asyncio.create_task(stack.start())
    stopping = asyncio.create_task(stop.wait())
    code = 0
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            error = starting.exception()
            if error is not None:
                report("error", f"start-up failed: {error}")
                code = 1
            else:
                on_ready()
                await stopping
        else:
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await starting
    finally:
        stopping.cancel()
        report("info", "stopping")
        await stack.stop()
        report("info", "stopped")
    return code
