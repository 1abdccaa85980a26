"""``epm``: the operator/technician CLI, the dev supervisor and the service entrypoint."""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated

import orjson
import typer

from epm_cli import nats_auth
from epm_cli.dev.command import dev
from epm_cli.output import JsonFlag, JsonUsageErrors, emit, fail
from epm_cli.services import SERVICES, runner
from epm_cli.technician import audit, devices, events, notify, requests, rules, tenant, token
from epm_cli.technician import offline as offline_tools

app = typer.Typer(
    cls=JsonUsageErrors,  # with --json, usage errors are {"error": ...} too
    help="EPM: endpoint privilege management for MSPs. Every command accepts --json.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
streams_app = typer.Typer(help="JetStream streams.", no_args_is_help=True)
events_app = typer.Typer(help="The event contract and the event stream.", no_args_is_help=True)
app.command(name="dev")(dev)
app.add_typer(tenant.app, name="tenant")
app.add_typer(token.app, name="token")
app.add_typer(devices.enrollment_app, name="enrollment-token")
app.add_typer(devices.device_app, name="device")
app.add_typer(requests.app, name="request")
app.add_typer(rules.app, name="rule")
app.add_typer(notify.app, name="notify")
app.add_typer(offline_tools.app, name="offline")
app.add_typer(audit.app, name="audit")
app.add_typer(streams_app, name="streams")
app.add_typer(nats_auth.app, name="nats-auth")
app.add_typer(events_app, name="events")
events_app.command("tail")(events.tail_command)


@app.command()
def serve(
    name: Annotated[str, typer.Argument(help=f"One of: {', '.join(SERVICES)}")],
) -> None:
    """Run one EPM process in the foreground (the container entrypoint uses this)."""
    if name not in SERVICES:
        fail(f"unknown service {name!r}; choose one of {', '.join(SERVICES)}", False, 2)
    runner(name)()


@streams_app.command("apply")
def streams_apply(
    nats_url: Annotated[
        str | None, typer.Option(envvar="EPM_NATS_URL", help="NATS server URL")
    ] = None,
    replicas: Annotated[
        int | None,
        typer.Option(envvar="EPM_STREAM_REPLICAS", help="Replicas (1 locally, 3 on Kubernetes)"),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create or update the EPM streams (idempotent)."""
    from epm_service.bus import connect, explained
    from epm_service.settings import Settings
    from epm_service.streams import apply_streams

    settings = Settings()
    if nats_url:
        settings.nats_url = nats_url
    if replicas:
        settings.stream_replicas = replicas

    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)  # the cause (refused credentials), not nats-py's "no servers"

    async def go() -> list[tuple[str, str]]:
        bus = await connect(
            settings, name="epm-streams-apply", max_reconnect_attempts=3, error_cb=on_error
        )
        try:
            return await apply_streams(bus.js, settings.stream_replicas)
        finally:
            await bus.close()

    try:
        done = asyncio.run(go())
    except Exception as exc:
        fail(
            f"could not apply streams: {explained(errors[-1] if errors else exc, settings)}",
            as_json,
        )
    emit(
        {"streams": [{"name": n, "action": a} for n, a in done]},
        as_json,
        "\n".join(f"{n}: {a}" for n, a in done),
    )


@events_app.command("asyncapi")
def events_asyncapi() -> None:
    """Print the AsyncAPI 3 document of the event contract (generated from the code)."""
    from epm_events.asyncapi import asyncapi_document

    sys.stdout.write(orjson.dumps(asyncapi_document(), option=orjson.OPT_INDENT_2).decode() + "\n")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
