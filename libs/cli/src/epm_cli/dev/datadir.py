"""The files ``epm dev`` keeps in its data dir, and how they are written.

Secrets (the master key, the bootstrap admin token) are created once, mode
0600, and kept: a second start continues where the first stopped.
"""

from __future__ import annotations

import base64
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

ADMIN_TOKEN_PREFIX = "epm_"


@dataclass(frozen=True)
class DataDir:
    root: Path

    @property
    def nats_store(self) -> Path:
        return self.root / "nats"

    @property
    def nats_auth(self) -> Path:
        """NATS operator/account keys (created once), creds and resolver.conf (0600 each)."""
        return self.root / "nats-auth"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def lock_file(self) -> Path:
        return self.root / "dev.lock"

    @property
    def ports_file(self) -> Path:
        return self.root / "ports.json"

    @property
    def endpoints_file(self) -> Path:
        return self.root / "endpoints.json"

    @property
    def master_key_file(self) -> Path:
        return self.root / "master-key"

    @property
    def admin_token_file(self) -> Path:
        return self.root / "admin-token"

    def log_file(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        self.nats_store.mkdir(exist_ok=True)

    def master_key(self) -> str:
        """``EPM_MASTER_KEY`` if set, else the key in the data dir (created on first start)."""
        from_env = os.environ.get("EPM_MASTER_KEY")
        if from_env:
            return from_env
        return ensure_secret(
            self.master_key_file, lambda: base64.b64encode(secrets.token_bytes(32)).decode()
        )

    def admin_token(self) -> str:
        return ensure_secret(self.admin_token_file, new_admin_token)

    def read_endpoints(self) -> dict[str, Any] | None:
        try:
            loaded = orjson.loads(self.endpoints_file.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return None
        return loaded if isinstance(loaded, dict) else None


def new_admin_token() -> str:
    return ADMIN_TOKEN_PREFIX + secrets.token_urlsafe(32)


def write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Readers see the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def write_json_atomically(path: Path, obj: object) -> None:
    write_atomically(path, orjson.dumps(obj, option=orjson.OPT_INDENT_2) + b"\n")


def ensure_secret(path: Path, make: Any) -> str:
    """The one-line secret in ``path``; created (mode 0600) if missing or empty."""
    try:
        existing = path.read_text().strip()
    except FileNotFoundError:
        existing = ""
    if existing:
        return existing
    value: str = make()
    write_atomically(path, (value + "\n").encode(), mode=0o600)
    return value
