"""A projection written in a process of its own, read where the service runs.

A service whose event loop answers people while it waits (request-svc answers an agent's
online request within its round trip) pays for every event its projection receives and
writes: nats-py reading it, the batch's SQL, the outbox relay's publish. On this machine that
was a quarter of request-svc's CPU per online request, on the same loop every answer waits
for (bench/README.md, "Online request", session 13). Here a child process consumes the
stream, writes the file and relays its outbox (``epm_service.projection.Projector`` and
``epm_service.outbox.OutboxRelay``, as in any service); the service reads the same SQLite
file (WAL: readers never wait for the writer) and learns the child's position from it.

``ProjectionProcess`` is what the service holds: the reading side of a ``Projector``
(``position``, ``caught_up``, ``last_seq_of``, ``wait_for``, ``wait_past``, ``read``,
``read_committed``, ``read_now``). The child tells it its position after commits (at once
when a watched event moved, otherwise at most every ``REPORT_SECONDS``);
``wait_for`` and ``read`` ask the child, which then writes what it has received at once
(read-your-writes, as in-process). A child that ends is started again (after
``RESTART_SECONDS``); meanwhile reads see what is committed and waits for more time out.
The child ends with the service: when the service closes its end, or by SIGKILL when the
service dies (``end_with_parent``).

Nothing about exactly-once changes: the child's Projector commits each batch, its
idempotency records and its checkpoint in one transaction, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, TypeVar

from epm_service.processes import connection_streams, read_frame, spawn_child, write_frame
from epm_service.projection import Projection, Projector, Readers
from epm_service.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

START_TIMEOUT = 60.0
"""How long a service waits for its projection's process to open the file (a spawn imports
what the projection needs first: about a second here)."""
RESTART_SECONDS = 1.0
CHILD_NICENESS = 10
"""The child yields the CPU to the service: what waits for it (a read-your-writes, a
device's decision on EPM_DEVICE) waits milliseconds at most, while every online answer
waits behind whatever runs on the service's core."""
STOP_SECONDS = 10.0
REPORT_SECONDS = 0.05
"""After a commit that changed nothing the service acts on at once (a watched event, caught
up), the child tells its position at most this often: at an online request's pace every
report woke the service twice per request, to learn a position nothing on that path reads.
What waits for a position asks the child instead (``wait_for``, ``read``), and is answered
when it is reached."""


@dataclass(frozen=True)
class OwnProcess:
    """A projection that runs in a process of its own (``ServiceDefinition.own_processes``).
    ``projection``: its class, built in the child; ``relay_outbox``: the child also
    publishes the projection's outbox (``epm_service.outbox``)."""

    projection: type[Projection]
    relay_outbox: bool = False

    @property
    def name(self) -> str:
        return self.projection.name


class ProjectionProcessFailed(RuntimeError):
    """The projection's process ended before it opened its file."""


# A report of the child: (kind, token, ok, position, caught_up, last_seq_of). kind "open"
# once the file is open, "at" after commits (``_Reports``), "done" answering the service's
# request ``token`` (ok: whether what was asked for is applied).
Report = tuple[str, int, bool, int, bool, dict[str, int]]


class ProjectionProcess:
    """The service's side: the child's position, and reads of the file it writes."""

    def __init__(self, spec: OwnProcess, settings: Settings, service: str, path: Path) -> None:
        self.spec = spec
        self.settings = settings
        self.service = service
        self.path = path
        self.name = spec.name
        self.position = 0
        self.last_seq_of: dict[str, int] = {}
        self.readers = Readers(path, spec.name)
        self._caught_up = False
        self._alive = False
        self._process: BaseProcess | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reading: asyncio.Task[None] | None = None
        self._restarting: asyncio.Task[None] | None = None
        self._opened: asyncio.Future[None] | None = None
        self._tokens = itertools.count(1)
        self._asked: dict[int, asyncio.Future[bool]] = {}
        self._past: list[tuple[int, asyncio.Future[None]]] = []
        self._caught_up_waiters: list[asyncio.Future[None]] = []
        self._stopped = False

    # --- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Start the child and wait until it has opened the file (ProjectionProcessFailed
        if it ends first: its log says why)."""
        await self._spawn()
        assert self._opened is not None
        try:
            async with asyncio.timeout(START_TIMEOUT):
                await self._opened
        except TimeoutError:
            raise ProjectionProcessFailed(
                f"the {self.name} projection's process did not open {self.path} within"
                f" {START_TIMEOUT:g}s"
            ) from None

    async def _spawn(self) -> None:
        self._opened = asyncio.get_running_loop().create_future()
        self._process, reader, self._writer = await spawn_child(
            f"{self.service}-{self.name}",
            _child_main,
            (self.spec, self.settings, self.service, self.path),
            forked=True,
        )
        self._alive = True
        self._reading = asyncio.create_task(self._read(reader), name=f"{self.name}-reports")

    async def stop(self) -> None:
        """Close the child's end (it stops its consumer and closes the file), then wait for
        it to exit; killed after ``STOP_SECONDS``."""
        if self._stopped:
            return
        self._stopped = True
        if self._restarting is not None:
            self._restarting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._restarting
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        process = self._process
        if process is not None:
            await asyncio.to_thread(process.join, STOP_SECONDS)
            if process.is_alive():
                log.warning("the projection's process did not stop; killing it")
                process.kill()
                await asyncio.to_thread(process.join, STOP_SECONDS)
        if self._reading is not None:
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading
        self._fail_waiters()
        self.readers.close()

    @property
    def caught_up(self) -> bool:
        """The child runs and has applied what the stream held when it started."""
        return self._alive and self._caught_up

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    # --- what the child reports ------------------------------------------------------

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                self._on_report(await read_frame(reader))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        self._ended()

    def _on_report(self, report: Report) -> None:
        kind, token, ok, position, caught_up, last_seq_of = report
        if last_seq_of:
            self.last_seq_of.update(last_seq_of)
        if position > self.position:
            self.position = position
            if self._past:
                self._wake_past()
        self._caught_up = caught_up
        if caught_up and self._caught_up_waiters:
            for waiter in self._caught_up_waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._caught_up_waiters.clear()
        if kind == "done":
            asked = self._asked.pop(token, None)
            if asked is not None and not asked.done():
                asked.set_result(ok)
        elif kind == "open" and self._opened is not None and not self._opened.done():
            self._opened.set_result(None)

    def _wake_past(self) -> None:
        still = []
        for position, waiter in self._past:
            if self.position > position:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                still.append((position, waiter))
        self._past = still

    def _ended(self) -> None:
        self._alive = False
        self._fail_waiters()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._opened is not None and not self._opened.done():
            self._opened.set_exception(
                ProjectionProcessFailed(
                    f"the {self.name} projection's process ended before it opened {self.path};"
                    " its log says why"
                )
            )
            return
        if self._stopped:
            return
        code = self._process.exitcode if self._process is not None else None
        log.error(
            "the projection's process ended; starting another",
            extra={"projection": self.name, "exit_code": code},
        )
        self._restarting = asyncio.create_task(self._restart(), name=f"{self.name}-restart")

    def _fail_waiters(self) -> None:
        for asked in self._asked.values():
            if not asked.done():
                asked.set_result(False)
        self._asked.clear()

    async def _restart(self) -> None:
        if self._process is not None:
            await asyncio.to_thread(self._process.join, STOP_SECONDS)
        while not self._stopped:
            await asyncio.sleep(RESTART_SECONDS)
            try:
                await self.start()
                return
            except (ProjectionProcessFailed, OSError) as exc:
                log.error("the projection's process did not start again: %s", exc)

    # --- waits ----------------------------------------------------------------------

    async def _ask(self, request: tuple[Any, ...], timeout: float) -> bool:
        if self._writer is None:
            return False
        token = next(self._tokens)
        answer = self._asked[token] = asyncio.get_running_loop().create_future()
        write_frame(self._writer, (request[0], token, *request[1:]))
        try:
            async with asyncio.timeout(timeout + 1.0):  # the child times out first
                ok: bool = await answer
                return ok
        except TimeoutError:
            return False
        finally:
            self._asked.pop(token, None)

    async def wait_for(self, seq: int, timeout: float = 5.0) -> bool:
        """Until the child has applied stream sequence ``seq`` (``Projector.wait_for``)."""
        if self.position >= seq:
            return True
        return await self._ask(("wait_for", seq, timeout), timeout)

    async def wait_past(self, position: int, timeout: float = 5.0) -> bool:
        """Until the child commits a batch beyond ``position`` (``Projector.wait_past``)."""
        if self.position > position:
            return True
        waiter = asyncio.get_running_loop().create_future()
        self._past.append((position, waiter))
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            return False
        return True

    async def wait_caught_up(self, timeout: float | None = None) -> None:
        if self.caught_up:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._caught_up_waiters.append(waiter)
        async with asyncio.timeout(timeout):
            await waiter

    # --- reads ----------------------------------------------------------------------

    async def read(self, fn: Callable[[Any], T]) -> T:
        """``fn`` on a reader thread after the child has written what it has received
        (``Projector.read``)."""
        await self._ask(("received",), 5.0)
        return await self.readers.read(fn)

    async def read_committed(self, fn: Callable[[Any], T]) -> T:
        return await self.readers.read(fn)

    def read_now(self, fn: Callable[[Any], T]) -> T:
        """A SMALL indexed query on the loop, on what is committed (``Projector.read_now``)."""
        return self.readers.read_now(fn)


# --- the child ------------------------------------------------------------------------


def _child_main(
    conn: Connection, spec: OwnProcess, settings: Settings, service: str, path: Path
) -> None:
    from epm_service.jsonlog import setup_logging
    from epm_service.natsserver import end_with_parent
    from epm_service.runtime import tune_gc

    # The service ends the child by closing its end. Should the service die, the fork
    # server (the child's parent) ends with it, and then the child, by SIGKILL: it has
    # nobody to report to, and a write cut short is rolled back with its checkpoint.
    # Signals meant for the service (Ctrl-C, SIGTERM to the group) are not the child's.
    end_with_parent(os.getppid(), signal.SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.nice(CHILD_NICENESS)
    setup_logging(service, settings.log_level)
    tune_gc()
    try:
        import uvloop

        uvloop.run(_child(conn, spec, settings, service, path))
    except ImportError:  # pragma: no cover
        asyncio.run(_child(conn, spec, settings, service, path))


async def _child(
    conn: Connection, spec: OwnProcess, settings: Settings, service: str, path: Path
) -> None:
    from epm_service.outbox import OutboxRelay
    from epm_service.runtime import connect_service

    reader, writer = await connection_streams(conn)
    bus = await connect_service(settings, service, spec.name)
    projector = Projector(bus.js, spec.projection(), path, service=service)
    reports = _Reports(writer, projector)
    report = reports.send

    async def answer_wait(token: int, seq: int, timeout: float) -> None:
        ok = await projector.wait_for(seq, timeout)
        report("done", token, ok)

    async def answer_received(token: int) -> None:
        await projector.write_received()
        report("done", token, True)

    async def tell_caught_up() -> None:
        await projector.wait_caught_up()
        report("at")

    projector.on_commit = reports.committed
    relay = OutboxRelay(bus.js, projector) if spec.relay_outbox else None
    tasks: set[asyncio.Task[None]] = set()
    try:
        await projector.start()
        report("open")
        if relay is not None:
            await relay.start()
        tasks.add(asyncio.create_task(tell_caught_up()))
        while True:
            try:
                request = await read_frame(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                break  # the service closed its end: stop
            kind, token = request[0], request[1]
            if kind == "wait_for":
                task = asyncio.create_task(answer_wait(token, *request[2:]))
            else:
                task = asyncio.create_task(answer_received(token))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        for task in list(tasks):
            task.cancel()
        if relay is not None:
            with contextlib.suppress(Exception):
                await relay.stop()
        reports.cancel()
        await projector.stop()
        await bus.close()
        writer.close()


class _Reports:
    """The child's reports to the service. A commit that moved a watched event
    (``last_seq_of``: a DeviceRevoked) or changed ``caught_up`` is told at once; a commit
    that only moved the position, at most every ``REPORT_SECONDS`` (the last one always,
    within that time)."""

    def __init__(self, writer: asyncio.StreamWriter, projector: Projector) -> None:
        self.writer = writer
        self.projector = projector
        self._told: dict[str, int] = {}
        self._told_caught_up = False
        self._last = 0.0
        self._due: asyncio.TimerHandle | None = None

    def send(self, kind: str, token: int = 0, ok: bool = True) -> None:
        p = self.projector
        changed = self._untold()
        self._told.update(changed)
        self._told_caught_up = p.caught_up
        self._last = asyncio.get_running_loop().time()
        self.cancel()
        write_frame(self.writer, (kind, token, ok, p.position, p.caught_up, changed))

    def committed(self) -> None:
        loop = asyncio.get_running_loop()
        urgent = self.projector.caught_up != self._told_caught_up or bool(self._untold())
        wait = self._last + REPORT_SECONDS - loop.time()
        if urgent or wait <= 0:
            self.send("at")
        elif self._due is None:
            self._due = loop.call_later(wait, self._send_due)

    def _untold(self) -> dict[str, int]:
        """The watched events whose last sequence moved since the last report."""
        return {k: v for k, v in self.projector.last_seq_of.items() if self._told.get(k) != v}

    def _send_due(self) -> None:
        self._due = None
        self.send("at")

    def cancel(self) -> None:
        if self._due is not None:
            self._due.cancel()
            self._due = None
