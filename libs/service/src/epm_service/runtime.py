"""Wires a service definition to NATS, its projections, its commands and its health endpoint.

A service is declared, not programmed: a name, its projections, and a
function that builds its command table from the context (the bootstrap of
cosmicpython). ``run_service`` does the rest and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol

from epm_events.envelope import service_source
from epm_events.streams import ALL_STREAMS
from pydantic import ValidationError

from epm_service.bus import Bus, NatsSettingsError, connect
from epm_service.health import HealthServer
from epm_service.jsonlog import setup_logging
from epm_service.metrics import LOOP_LAG_SECONDS
from epm_service.natsauth import service_inbox_prefix
from epm_service.projection import Projection, Projector
from epm_service.projection_process import OwnProcess, ProjectionProcess, ProjectionProcessFailed
from epm_service.publisher import EventPublisher
from epm_service.rpc import CommandHandler, RpcServer
from epm_service.secretbox import SecretBoxError
from epm_service.settings import Settings, env_name
from epm_service.streams import MissingStreams, check_streams
from epm_service.tls import TlsSettingsError
from epm_service.worker import cancel_and_wait

log = logging.getLogger(__name__)

STARTUP_ERRORS: tuple[type[Exception], ...] = (
    MissingStreams,
    TlsSettingsError,
    NatsSettingsError,
    SecretBoxError,
    ProjectionProcessFailed,
)
"""What stops a process at start with one sentence that says what to do (``cannot start:
...``, exit 1), not a traceback: each message names the setting or the step."""


def settings_or_exit(service: str) -> Settings:
    """The settings from ``EPM_*``, or ``cannot start: EPM_X: why`` and exit 1."""
    try:
        return Settings()
    except ValidationError as exc:
        setup_logging(service)
        log.error("cannot start: %s", settings_problem(exc))
        sys.exit(1)


def settings_problem(exc: ValidationError) -> str:
    """Each invalid setting as its variable and the reason (never the value: it may be a
    secret)."""
    return "; ".join(
        f"{env_name('_'.join(str(p) for p in err['loc']))}: {err['msg']}" for err in exc.errors()
    )


def exit_on_startup_error(exc: Exception) -> NoReturn:
    log.error("cannot start: %s", exc)
    sys.exit(1)


class Worker(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


@dataclass
class ServiceContext:
    """What handlers get injected: settings, the bus, the publisher, the projectors."""

    name: str
    settings: Settings
    bus: Bus
    publisher: EventPublisher
    projectors: dict[str, Projector] = field(default_factory=dict)
    processes: dict[str, ProjectionProcess] = field(default_factory=dict)
    """Projections written in processes of their own (``ServiceDefinition.own_processes``)."""
    workers: list[Worker] = field(default_factory=list)
    connections: dict[str, Bus] = field(default_factory=dict)
    """The service's other connections (``connection``), by purpose: readiness checks them."""

    def projector(self, name: str) -> Projector:
        return self.projectors[name]

    def projection_process(self, name: str) -> ProjectionProcess:
        return self.processes[name]

    async def connection(self, purpose: str) -> Bus:
        """Another connection of this service (its credentials and inbox prefix), for
        deliveries that must not queue ahead of the replies and acknowledgements on the
        service's own: the caller closes it. Until then readiness counts it."""
        bus = self.connections[purpose] = await connect_service(self.settings, self.name, purpose)
        return bus

    async def start_worker(self, worker: Worker) -> None:
        """Start a background worker (consumer, scheduler, relay); it is stopped with the service."""
        await worker.start()
        self.workers.append(worker)


@dataclass
class ServiceDefinition:
    name: str
    projections: Sequence[Callable[[ServiceContext], Projection]] = ()
    own_processes: Sequence[OwnProcess] = ()
    """Projections each written in a process of its own (epm_service.projection_process),
    started before ``projections``."""
    commands: Callable[[ServiceContext], Mapping[str, CommandHandler]] = lambda ctx: {}
    on_start: Callable[[ServiceContext], Awaitable[None]] | None = None
    streams: tuple[str, ...] = tuple(s.name for s in ALL_STREAMS)


class RunningService:
    def __init__(self, ctx: ServiceContext, rpc: RpcServer, tasks: list[asyncio.Task[Any]]) -> None:
        self.ctx = ctx
        self.rpc = rpc
        self.tasks = tasks

    def ready(self) -> tuple[bool, str]:
        nc = self.ctx.bus.nc
        if not nc.is_connected:
            return False, "not connected to NATS"
        for purpose, bus in self.ctx.connections.items():
            if not bus.nc.is_connected and not bus.nc.is_closed:
                return False, f"the {purpose} connection to NATS is down (reconnecting)"
        for name, p in self.ctx.projectors.items():
            if not p.caught_up:
                return False, f"projection {name} is catching up"
        for name, process in self.ctx.processes.items():
            if not process.caught_up:
                return False, f"projection {name} is catching up (or its process restarting)"
        return True, ""

    async def stop(self) -> None:
        for t in self.tasks:
            await cancel_and_wait(t)
        await self.rpc.stop()
        for w in reversed(self.ctx.workers):
            with contextlib.suppress(Exception):
                await w.stop()
        for p in self.ctx.projectors.values():
            await p.stop()
        for process in self.ctx.processes.values():
            await process.stop()
        await self.ctx.bus.close()


async def connect_service(settings: Settings, service: str, purpose: str = "") -> Bus:
    """A connection of ``service``: named after it (and ``purpose``), its replies under the
    service's own inbox prefix, which is all its NATS user may read."""
    name = f"{service}-{purpose}" if purpose else service
    return await connect(settings, name=name, inbox_prefix=service_inbox_prefix(service))


async def start_service(defn: ServiceDefinition, settings: Settings) -> RunningService:
    bus = await connect_service(settings, defn.name)
    await check_streams(bus.js, defn.streams)
    ctx = ServiceContext(
        name=defn.name,
        settings=settings,
        bus=bus,
        publisher=EventPublisher(bus.js, service_source(defn.name)),
    )
    try:
        for spec in defn.own_processes:
            process = ProjectionProcess(
                spec, settings, defn.name, settings.db_path(f"{defn.name}-{spec.name}")
            )
            ctx.processes[spec.name] = process
            await process.start()
        for make in defn.projections:
            projection = make(ctx)
            projector = Projector(
                bus.js,
                projection,
                settings.db_path(f"{defn.name}-{projection.name}"),
                service=defn.name,
            )
            ctx.projectors[projection.name] = projector
            await projector.start()
        rpc = RpcServer(bus.nc, defn.name, defn.commands(ctx))
        await rpc.start()
        if defn.on_start is not None:
            await defn.on_start(ctx)
    except BaseException:
        for process in ctx.processes.values():  # not left running behind a failed start
            await process.stop()
        raise
    return RunningService(ctx, rpc, [])


async def run_service(defn: ServiceDefinition, settings: Settings | None = None) -> None:
    """Run until SIGTERM/SIGINT; health on ``EPM_HEALTH_PORT``."""
    settings = settings or settings_or_exit(defn.name)
    setup_logging(defn.name, settings.log_level)
    tune_gc()  # before start-up too: a projection rebuilt there is the heaviest work of all
    running = await start_service(defn, settings)
    tune_gc()
    lag = asyncio.create_task(watch_loop_lag(defn.name), name="loop-lag")
    health = HealthServer(settings.http_host, settings.health_port, running.ready)
    port = await health.start()
    log.info("service started", extra={"health_port": port, "nats_url": settings.nats_url})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    lag.cancel()
    log.info("stopping")
    await health.stop()
    with contextlib.suppress(Exception):
        await running.stop()
    log.info("stopped")


LOOP_LAG_TICK = 0.05
LOOP_STALL_WARNING = 0.1


async def watch_loop_lag(service: str) -> None:
    """Measure how late a 50 ms timer fires (``epm_event_loop_lag_seconds``): the time the
    loop spent on something that did not yield. A stall over 100 ms is logged."""
    loop = asyncio.get_running_loop()
    observe = LOOP_LAG_SECONDS.labels(service).observe
    while True:
        due = loop.time() + LOOP_LAG_TICK
        await asyncio.sleep(LOOP_LAG_TICK)
        late = max(loop.time() - due, 0.0)
        observe(late)
        if late > LOOP_STALL_WARNING:
            log.warning("event loop stalled", extra={"ms": round(late * 1000)})


GC_GEN0_THRESHOLD = 10_000
"""Allocations between young collections (Python's default is 700): a projector allocates a
few objects per message, and fewer collections cost it less time in the collector
(bench/README.md, "Garbage collection")."""


def tune_gc() -> None:
    """Fewer young collections, and everything alive after start-up (modules, settings,
    handler tables) moved out of the collector's sight: it never changes, so walking it in
    every full collection would be wasted."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def main(defn: ServiceDefinition) -> None:
    settings = settings_or_exit(defn.name)
    try:
        try:
            import uvloop

            uvloop.run(run_service(defn, settings))
        except ImportError:  # pragma: no cover
            asyncio.run(run_service(defn, settings))
    except STARTUP_ERRORS as exc:
        exit_on_startup_error(exc)
