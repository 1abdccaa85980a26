"""One ``epm dev`` per data dir: an flock on ``dev.lock`` holding the owner's PID."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path


class DataDirLocked(RuntimeError):
    pass


class DevLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        # os.open descriptors are not inherited: children never keep the lock alive.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirLocked(
                f"another epm dev (pid {holder}) is already running on {self.path.parent}; "
                f"stop it first (Ctrl-C there, or kill {holder}) or use another --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None
