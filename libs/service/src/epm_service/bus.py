"""The NATS/JetStream connection every process uses."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext

from epm_service import natsfast
from epm_service.settings import Settings, env_name
from epm_service.tls import TlsSettingsError, nats_client_context

log = logging.getLogger(__name__)

natsfast.install()  # every process that connects through here parses headers faster

REPEAT_LOG_SECONDS = 60.0
"""The same NATS error is logged once, then at most this often (with how many came)."""


class NatsSettingsError(ValueError):
    """A NATS setting that cannot be used; the message names the setting and what to do."""


def check_creds_file(settings: Settings) -> None:
    """``EPM_NATS_CREDS`` names a readable file, or nats-py fails every reconnect with a
    bare 'No such file or directory' and the process waits forever."""
    path = settings.nats_creds
    if not path:
        return
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise NatsSettingsError(
            f"{env_name('nats_creds')} is {path!r}, which cannot be read ({exc.strerror or exc}): "
            "mount this process's NATS user there (epm nats-auth init writes one per process)"
        ) from None


def explained(exc: Exception, settings: Settings) -> str:
    """A NATS client error as a sentence that names the setting to look at."""
    text = str(exc)
    if isinstance(exc, NatsSettingsError | TlsSettingsError):
        return text  # names its setting already
    if "authorization violation" in text.lower() or "authentication" in text.lower():
        creds = settings.nats_creds or "not set"
        return (
            f"NATS at {settings.nats_url} refused this process's credentials ({text}): "
            f"check {env_name('nats_creds')} ({creds})"
        )
    if isinstance(exc, OSError) or "no servers available" in text.lower():
        return f"cannot reach NATS at {settings.nats_url} ({text}): check {env_name('nats_url')}"
    return f"nats error at {settings.nats_url}: {text}"


class _Throttled:
    """Logs a message the first time, then the same message at most every
    ``REPEAT_LOG_SECONDS`` with how often it came: a NATS server that is down or refuses
    the credentials would otherwise fill the log twice a second."""

    def __init__(self) -> None:
        self._last = ""
        self._at = 0.0
        self._repeats = 0

    def __call__(self, message: str) -> None:
        now = time.monotonic()
        if message == self._last and now - self._at < REPEAT_LOG_SECONDS:
            self._repeats += 1
            return
        if message == self._last and self._repeats:
            times = "time" if self._repeats == 1 else "times"
            message = f"{message} ({self._repeats} more {times} since it was last logged)"
        else:
            self._last = message
        self._at, self._repeats = now, 0
        log.warning(message)


@dataclass
class Bus:
    nc: Client
    js: JetStreamContext

    async def close(self) -> None:
        if not self.nc.is_closed:
            await self.nc.drain()


async def connect(settings: Settings, name: str, **extra: Any) -> Bus:
    """Connect with unlimited reconnects; logs disconnects instead of raising.

    TLS (``EPM_NATS_TLS_*``) is checked before connecting: a missing or unusable file
    raises ``epm_service.tls.TlsSettingsError``; an unreadable ``EPM_NATS_CREDS`` file,
    ``NatsSettingsError``."""
    tls = nats_client_context(settings)
    check_creds_file(settings)
    warn = _Throttled()

    async def on_disconnect() -> None:
        log.warning("nats disconnected", extra={"nats_url": settings.nats_url})

    async def on_reconnect() -> None:
        log.info("nats reconnected", extra={"nats_url": settings.nats_url})

    async def on_error(exc: Exception) -> None:
        warn(explained(exc, settings))

    opts: dict[str, Any] = dict(
        servers=[settings.nats_url],
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        error_cb=on_error,
        pending_size=64 * 1024 * 1024,
    )
    if settings.nats_creds:
        opts["user_credentials"] = settings.nats_creds
    elif settings.nats_user:
        opts["user"] = settings.nats_user
        opts["password"] = settings.nats_password
    if tls is not None:
        opts["tls"] = tls
    opts.update(extra)
    nc = await nats.connect(**opts)
    return Bus(nc=nc, js=nc.jetstream(timeout=10, publish_async_max_pending=20_000))
