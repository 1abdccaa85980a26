"""gateway: the HTTP edge (tenants, tokens, authentication, REST API, console).

One process runs the service runtime (NATS, the directory projection, the
command table) and the HTTP server (uvicorn) side by side.

Handler table:
- projections: directory (TenantCreated, TokenIssued, TokenRevoked) -> epm_gateway.directory
- commands: epm_gateway.commands.COMMANDS (create_tenant, issue_token, revoke_token)
- on start: the bootstrap msp_admin token (EPM_BOOTSTRAP_TOKEN_FILE)
- HTTP routes: epm_gateway.api.create_app

On SIGTERM/SIGINT the open event streams (SSE) end first, then uvicorn finishes
the answers in flight for at most ``SHUTDOWN_GRACE_SECONDS`` and cancels what is
left; a second signal stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Coroutine, Iterator
from typing import Any

import uvicorn
from epm_service.jsonlog import setup_logging
from epm_service.runtime import (
    STARTUP_ERRORS,
    RunningService,
    ServiceDefinition,
    exit_on_startup_error,
    settings_or_exit,
    start_service,
)
from epm_service.settings import Settings
from epm_service.tls import (
    CertificateReload,
    https_files,
    reload_certificates,
)
from epm_service.worker import cancel_and_wait

from epm_gateway.api import create_app
from epm_gateway.bootstrap import ensure_bootstrap_admin
from epm_gateway.commands import command_handlers
from epm_gateway.directory import Directory
from epm_gateway.events_stream import end_event_streams

NAME = "gateway"

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS = 10
"""How long a stopping gateway lets answers in flight finish before it cancels them
(well inside the pod's terminationGracePeriodSeconds, 30)."""

DEFINITION = ServiceDefinition(
    name=NAME,
    projections=[lambda ctx: Directory()],
    commands=command_handlers,
    on_start=ensure_bootstrap_admin,
)


async def start_gateway(settings: Settings) -> RunningService:
    """NATS, the directory projection, the command table, the bootstrap admin."""
    return await start_service(DEFINITION, settings)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: ``serve`` owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT, then stop HTTP first and the service runtime after it."""
    https = https_files(settings)  # before anything starts: a bad file is a clear error
    service = await start_gateway(settings)
    app = create_app(service)
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
        ssl_certfile=https[0] if https else None,
        ssl_keyfile=https[1] if https else None,
    )
    server = _Server(config)
    reloading: asyncio.Task[None] | None = None
    if https:
        config.load()  # builds config.ssl, the context every handshake uses
        assert config.ssl is not None
        reloads = [CertificateReload(config.ssl, *https, what="gateway's HTTPS")]
        reloading = asyncio.create_task(
            reload_certificates(reloads, settings.tls_reload_seconds), name="tls-reload"
        )

    def stop() -> None:
        if server.should_exit:  # a second signal: do not wait any longer
            log.info("stopping now")
            server.force_exit = True
            return
        # SSE clients never go by themselves: end their streams, or uvicorn would wait
        # for them ("waiting for connections to close") and the process would not exit.
        streams = end_event_streams(app)
        log.info("stopping", extra={"event_streams_ended": streams})
        server.should_exit = True

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    try:
        await server.serve()
    finally:
        if reloading is not None:
            await cancel_and_wait(reloading)
        with contextlib.suppress(Exception):
            await service.stop()
        log.info("stopped")
    if not server.started:
        raise SystemExit(
            f"gateway could not listen on {settings.http_host}:{settings.http_port};"
            " choose another port (EPM_HTTP_PORT, or epm dev --port)"
        )


def run() -> None:
    settings = settings_or_exit(NAME)
    setup_logging(NAME, settings.log_level)
    try:
        _run_loop(serve(settings))
    except STARTUP_ERRORS as exc:
        exit_on_startup_error(exc)
    except OSError as exc:
        log.error("cannot reach NATS at %s: %s", settings.nats_url, exc)
        sys.exit(1)


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(main)
    else:
        uvloop.run(main)
