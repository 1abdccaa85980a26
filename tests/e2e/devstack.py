"""``epm dev`` as a test sees it: a subprocess, its data dir, its children, its CLI."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson

T = TypeVar("T")

START_DEADLINE = 120.0
STOP_DEADLINE = 60.0


def wait_for(what: str, probe: Callable[[], T | None], deadline: float = 60.0) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` after the deadline."""
    end = time.monotonic() + deadline
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline:g}s waiting for {what}")
        time.sleep(0.1)


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPM_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def epm(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "epm_cli.main", *args],
        capture_output=True,
        text=True,
        env=env or clean_env(),
        timeout=timeout,
        check=False,
    )


def epm_json(*args: str) -> tuple[int, dict[str, Any]]:
    """Run an ``epm ... --json`` command: its exit code and its one JSON object."""
    done = epm(*args, "--json")
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one JSON line, got {done.stdout!r} (stderr {done.stderr!r})"
    obj = orjson.loads(lines[0])
    assert isinstance(obj, dict)
    return done.returncode, obj


class DevProcess:
    """One ``epm dev --data-dir DIR ...`` subprocess, its output in DIR/../<name>.out."""

    def __init__(self, data_dir: Path, *flags: str, name: str = "epm-dev") -> None:
        self.data_dir = data_dir
        self.flags = flags
        self.output = data_dir.parent / f"{name}.out"
        self.proc: subprocess.Popen[bytes] | None = None
        self.pids: set[int] = set()

    @property
    def endpoints_file(self) -> Path:
        return self.data_dir / "endpoints.json"

    def start(self) -> DevProcess:
        with open(self.output, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "epm_cli.main",
                    "dev",
                    "--data-dir",
                    str(self.data_dir),
                    *self.flags,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=clean_env(),
            )
        return self

    def run_to_exit(self, timeout: float = 60) -> tuple[int, str]:
        """For start-ups that must be refused: the exit code and what was printed."""
        assert self.proc is not None
        code = self.proc.wait(timeout)
        return code, self.output.read_text()

    def endpoints(self) -> dict[str, Any] | None:
        try:
            loaded = orjson.loads(self.endpoints_file.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return None
        if not isinstance(loaded, dict) or self.proc is None or loaded.get("pid") != self.proc.pid:
            return None  # not ours (yet): a stale file from an earlier run
        self.pids.update(p for p in loaded.get("processes", {}).values() if isinstance(p, int))
        return loaded

    def wait_ready(self) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"epm dev exited with {self.proc.returncode}:\n{self.output.read_text()}"
                )
            return self.endpoints()

        return wait_for("epm dev to write endpoints.json", ready, START_DEADLINE)

    def printed(self) -> str:
        return self.output.read_text()

    def stop(self) -> int:
        """SIGTERM, then wait; returns the exit code. SIGKILL (and a failure) if it hangs."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc is not None else 0
        self.endpoints()  # remember the latest PIDs
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            self.kill_everything()
            raise AssertionError(f"epm dev did not stop within {STOP_DEADLINE:g}s") from None

    def kill_everything(self) -> None:
        """Last resort for a failed test: nothing of this stack may outlive it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in self.pids:
            if process_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
