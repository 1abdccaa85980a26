"""A supervised child process of ``epm dev``: started, watched, restarted with backoff, stopped.

Every child runs in its own session (so Ctrl-C reaches only ``epm dev``,
which then stops them in order) and, on Linux, is signalled if ``epm dev``
dies without cleaning up (PR_SET_PDEATHSIG), so nothing is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from epm_service.natsserver import die_with_parent

FIRST_RESTART_DELAY = 0.5
MAX_RESTART_DELAY = 30.0
STABLE_AFTER = 60.0  # a child that ran this long starts its backoff over
STOP_TIMEOUT = 10.0
READY_AGAIN_TIMEOUT = 60.0


def restart_delay(attempt: int) -> float:
    """0.5 s, 1 s, 2 s, ... capped at 30 s, for the 1st, 2nd, 3rd ... restart in a row."""
    return float(min(MAX_RESTART_DELAY, FIRST_RESTART_DELAY * 2 ** max(0, attempt - 1)))


@dataclass
class ChildSpec:
    name: str
    argv: list[str]
    log_file: Path
    env: dict[str, str] = field(default_factory=dict)
    ready: Callable[[], Awaitable[bool]] | None = None  # True once it serves
    # Sent if epm dev dies without stopping it. SIGKILL for services: nats-server may be
    # going down at the same moment, and a service's clean stop would wait for it forever.
    death_signal: signal.Signals = signal.SIGKILL
    batch_scheduling: bool = False  # run as SCHED_BATCH (epm_service.natsserver.run_as_batch)


Report = Callable[[str, str], None]  # (level, message)


class Child:
    def __init__(self, spec: ChildSpec, report: Report) -> None:
        self.spec = spec
        self.report = report
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.on_started: Callable[[Child], None] | None = None
        self._stopping = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self._announcer: asyncio.Task[None] | None = None
        self._started_at = 0.0

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        await self._spawn()
        self._watcher = asyncio.create_task(self._watch(), name=f"watch {self.name}")

    async def _spawn(self) -> None:
        self.spec.log_file.parent.mkdir(parents=True, exist_ok=True)
        log = os.open(self.spec.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.spec.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env=self.spec.env or None,
                start_new_session=True,
                preexec_fn=die_with_parent(
                    self.spec.death_signal, batch_scheduling=self.spec.batch_scheduling
                ),
            )
        finally:
            os.close(log)
        self._started_at = time.monotonic()
        if self.on_started is not None:
            self.on_started(self)

    async def _watch(self) -> None:
        attempt = 0
        while True:
            assert self.proc is not None
            code = await self.proc.wait()
            if self._stopping.is_set():
                return
            ran = time.monotonic() - self._started_at
            attempt = 1 if ran >= STABLE_AFTER else attempt + 1
            delay = restart_delay(attempt)
            self.report(
                "error",
                f"{self.name} exited unexpectedly ({describe_exit(code)}); "
                f"restarting in {delay:g}s (see {self.spec.log_file})",
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stopping.wait()
            if self._stopping.is_set():
                return
            self.restarts += 1
            await self._spawn()
            self.report(
                "warning", f"{self.name} restarted (pid {self.pid}, restart {self.restarts})"
            )
            self._announcer = asyncio.create_task(self._announce_ready_again(self.proc))

    async def _announce_ready_again(self, proc: asyncio.subprocess.Process | None) -> None:
        deadline = time.monotonic() + READY_AGAIN_TIMEOUT
        while proc is not None and proc.returncode is None and time.monotonic() < deadline:
            if self.spec.ready is None or await self.spec.ready():
                self.report("info", f"{self.name} ready again")
                return
            await asyncio.sleep(0.1)

    async def wait_ready(self, deadline: float) -> bool:
        """Poll the child's readiness until it answers or the monotonic deadline passes."""
        while time.monotonic() < deadline:
            if self._stopping.is_set():
                return False
            if self.running and (self.spec.ready is None or await self.spec.ready()):
                return True
            await asyncio.sleep(0.1)
        return False

    async def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM to the child's process group, then SIGKILL after ``timeout``."""
        self._stopping.set()
        if self._announcer is not None:
            self._announcer.cancel()
        while True:
            await self._terminate(timeout)
            watcher = self._watcher
            if watcher is None or watcher.done():
                if not self.running:
                    return
                continue
            # The watcher may be spawning a restart right now: let it finish, then stop that too.
            await asyncio.wait({watcher}, timeout=0.2)

    async def _terminate(self, timeout: float) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(timeout):
                await proc.wait()
        except TimeoutError:
            self.report("warning", f"{self.name} did not stop within {timeout:g}s; killing it")
            _signal_group(proc.pid, signal.SIGKILL)
            await proc.wait()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
