"""The NATS/JetStream connection every process uses."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext

from epm_service import natsfast
from epm_service.settings import Settings
from epm_service.tls import nats_client_context

log = logging.getLogger(__name__)

natsfast.install()  # every process that connects through here parses headers faster


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
    raises ``epm_service.tls.TlsSettingsError``."""
    tls = nats_client_context(settings)

    async def on_disconnect() -> None:
        log.warning("nats disconnected", extra={"nats_url": settings.nats_url})

    async def on_reconnect() -> None:
        log.info("nats reconnected", extra={"nats_url": settings.nats_url})

    async def on_error(exc: Exception) -> None:
        log.warning("nats error: %s", exc)

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
