"""Worker processes for CPU-bound work an event loop hands off (request-svc's preparation of
offline log uploads), fed straight from the loop.

Why not ``concurrent.futures.ProcessPoolExecutor``: it moves jobs and results through two
threads of the calling process (a feeder that pickles and writes, a manager that reads and
unpickles). Both need the GIL, which a busy event loop hands over every switch interval
(5 ms) at best: in a replay storm the worker sat idle, waiting for those threads, while
jobs queued. Here the loop writes each job to the worker's socket itself and reads the
results as they come (asyncio streams), with no thread in between.

A job is ``fn(*args)`` with a module-level ``fn`` and picklable arguments; results come
back in order per worker (each worker runs one job at a time). A worker that dies fails
the jobs it held with ``WorkerDied`` and is replaced. Workers end with their parent, even
when it is SIGKILLed (``end_with_parent``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import multiprocessing
import os
import pickle
import signal
import socket
import struct
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

from epm_service.natsserver import end_with_parent

log = logging.getLogger(__name__)

T = TypeVar("T")

REPLACE_WAIT_SECONDS = 5.0
"""How long a job waits for a worker being replaced when no other runs (a spawn starts in
milliseconds; its imports happen while the job waits on its socket)."""

FORKSERVER_PRELOAD = ["epm_service.projection_process", "epm_service.runtime", "epm_service.outbox"]
"""What the fork server imports once for the children it forks (``spawn_child``)."""

_SIZE = struct.Struct("!i")  # multiprocessing.connection's framing of a message up to 2 GiB


def descendants(pid: int) -> list[int]:
    """The processes ``pid`` started, and theirs, as they run now (Linux /proc; none
    elsewhere): a service's workers, for whoever counts their CPU or checks they ended."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids = [int(k) for k in f.read().split()]
        except OSError:
            continue
        for kid in kids:
            found += [kid, *descendants(kid)]
    return found


async def spawn_child(
    name: str, target: Callable[..., None], args: tuple[Any, ...], *, forked: bool = False
) -> tuple[BaseProcess, asyncio.StreamReader, asyncio.StreamWriter]:
    """A new Python process running ``target(connection, *args)`` (a module-level function;
    ``connection``: its end of a socket pair, a ``multiprocessing.connection.Connection``),
    and this end as asyncio streams, framed as ``write_frame``/``read_frame`` (and
    ``Connection.send_bytes``/``recv_bytes``) frame.

    ``forked``: forked from multiprocessing's fork server (one per process, started at the
    first such child, with ``FORKSERVER_PRELOAD`` imported), not a new interpreter: a
    spawned child imports the service's libraries anew, a second of CPU each time (a test
    suite starts services hundreds of times). Its parent is then the fork server, which
    ends with this process."""
    ctx: BaseContext
    if forked:
        forkserver = multiprocessing.get_context("forkserver")
        forkserver.set_forkserver_preload(FORKSERVER_PRELOAD)
        ctx = forkserver
    else:
        ctx = multiprocessing.get_context("spawn")
    mine, theirs = ctx.Pipe(duplex=True)  # a socket pair
    process = ctx.Process(target=target, args=(theirs, *args), name=name, daemon=True)
    process.start()
    theirs.close()
    reader, writer = await asyncio.open_unix_connection(sock=_socket_of(mine))
    return process, reader, writer


def _socket_of(conn: Connection) -> socket.socket:
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    conn.close()
    return sock


async def connection_streams(conn: Connection) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """In a child of ``spawn_child``: its connection as asyncio streams."""
    return await asyncio.open_unix_connection(sock=_socket_of(conn))


def write_frame(writer: asyncio.StreamWriter, obj: Any) -> None:
    """``obj`` pickled, behind its size (buffered: ``drain`` where the peer may lag)."""
    data = pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    writer.write(_SIZE.pack(len(data)) + data)


async def read_frame(reader: asyncio.StreamReader) -> Any:
    """The next object ``write_frame`` wrote (IncompleteReadError: the peer is gone)."""
    (size,) = _SIZE.unpack(await reader.readexactly(_SIZE.size))
    return pickle.loads(await reader.readexactly(size))


class WorkerDied(RuntimeError):
    """The worker process running the job ended before it answered."""


def _serve(conn: Connection, parent: int, initializer: Callable[[], None] | None) -> None:
    """A worker's life: run each job it is sent, answer (ok, result) or (error, exc)."""
    end_with_parent(parent, signal.SIGTERM)
    # Ctrl-C reaches the whole process group: the parent stops its workers itself (closing
    # their pipes), so a worker ignores it rather than die with a KeyboardInterrupt trace.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if initializer is not None:
        initializer()
    while True:
        try:
            fn, args = pickle.loads(conn.recv_bytes())
        except EOFError:  # the parent closed its end: done
            return
        try:
            answer = pickle.dumps((True, fn(*args)), pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            try:
                answer = pickle.dumps((False, exc), pickle.HIGHEST_PROTOCOL)
            except Exception:
                answer = pickle.dumps((False, RuntimeError(repr(exc))), pickle.HIGHEST_PROTOCOL)
        conn.send_bytes(answer)


class _Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.process: Any = None
        self.writer: asyncio.StreamWriter | None = None
        self.pending: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.reading: asyncio.Task[None] | None = None
        self.replacing: asyncio.Task[None] | None = None


class WorkerProcesses:
    def __init__(
        self, count: int, name: str, initializer: Callable[[], None] | None = None
    ) -> None:
        self.name = name
        self.initializer = initializer
        self._workers = [_Worker(i) for i in range(count)]
        self._stopped = False

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.process is not None]

    async def start(self) -> None:
        """Spawn every worker (each imports what its jobs need meanwhile)."""
        for worker in self._workers:
            await self._spawn(worker)

    async def _spawn(self, worker: _Worker) -> None:
        worker.process, reader, worker.writer = await spawn_child(
            f"{self.name}-{worker.index}", _serve, (os.getpid(), self.initializer)
        )
        worker.reading = asyncio.create_task(
            self._read(worker, reader), name=f"{self.name}-{worker.index}-answers"
        )

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the running worker with the fewest jobs waiting. With none
        running, a replacement under way is waited for (``REPLACE_WAIT_SECONDS``); else
        WorkerDied."""
        running = [w for w in self._workers if w.writer is not None]
        replacing = [w.replacing for w in self._workers if w.replacing and not w.replacing.done()]
        if not running and replacing and not self._stopped:
            await asyncio.wait(replacing, timeout=REPLACE_WAIT_SECONDS)  # every one is
            running = [w for w in self._workers if w.writer is not None]
        if not running or self._stopped:
            raise WorkerDied(f"{self.name} has no worker running")
        worker = min(running, key=lambda w: len(w.pending))
        assert worker.writer is not None
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        worker.pending.append(future)
        try:
            write_frame(worker.writer, (fn, args))
            await worker.writer.drain()
        except (ConnectionError, OSError):
            pass  # the worker is gone: its reader sees the end and fails the job
        return await future

    async def _read(self, worker: _Worker, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                ok, value = await read_frame(reader)
                future = worker.pending.popleft()
                if future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        self._died(worker)

    def _died(self, worker: _Worker) -> None:
        while worker.pending:
            future = worker.pending.popleft()
            if not future.done():
                future.set_exception(WorkerDied(f"{self.name}-{worker.index} ended"))
        if worker.writer is not None:
            worker.writer.close()
            worker.writer = None
        if self._stopped:
            return
        code = worker.process.exitcode if worker.process is not None else None
        log.error(
            "a worker process ended; starting another",
            extra={"worker": f"{self.name}-{worker.index}", "exit_code": code},
        )
        worker.replacing = asyncio.get_running_loop().create_task(
            self._replace(worker), name=f"{self.name}-{worker.index}-replace"
        )

    async def _replace(self, worker: _Worker) -> None:
        if worker.process is not None:
            # Ended, or about to: reaped on a thread, not on the loop.
            await asyncio.to_thread(worker.process.join, 1)
        if not self._stopped:
            await self._spawn(worker)

    async def stop(self, timeout: float = 5.0) -> None:
        """Close every worker's socket (it exits when it reads the end), kill stragglers."""
        self._stopped = True
        for worker in self._workers:
            if worker.replacing is not None:  # lets a replacement under way finish first
                with contextlib.suppress(Exception):
                    await worker.replacing
        for worker in self._workers:
            if worker.writer is not None:
                worker.writer.close()
                worker.writer = None
        for worker in self._workers:
            if worker.reading is not None:
                worker.reading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker.reading
            if worker.process is None:
                continue
            await asyncio.to_thread(worker.process.join, timeout)
            if worker.process.is_alive():
                worker.process.kill()
                await asyncio.to_thread(worker.process.join, timeout)
