"""``epm notify channel add|list|remove``: who is told of requests and decisions."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from epm_cli.output import JsonFlag, emit, fail
from epm_cli.technician.options import (
    CursorOption,
    DataDirOption,
    TokenOption,
    UrlOption,
    api_session,
    limit_option,
    page_path,
    render_table,
    with_more,
)

app = typer.Typer(help="Notifications.", no_args_is_help=True)
channel_app = typer.Typer(
    help="Notification channels: webhook, e-mail, web push.", no_args_is_help=True
)
app.add_typer(channel_app, name="channel")

TenantOpt = Annotated[
    str | None,
    typer.Option(
        "--tenant", help="A tenant's channels; leave out for MSP-wide channels (all tenants)."
    ),
]


def _base(tenant: str | None) -> str:
    return f"/v1/tenants/{tenant}/notification-channels" if tenant else "/v1/notification-channels"


@channel_app.command("add")
def add(
    kind: Annotated[str, typer.Argument(metavar="KIND", help="webhook or email.")],
    tenant: TenantOpt = None,
    url_: Annotated[
        str | None, typer.Option("--webhook-url", help="webhook: where to POST.")
    ] = None,
    secret: Annotated[
        str | None,
        typer.Option("--secret", help="webhook: whsec_... (generated and shown once if omitted)."),
    ] = None,
    to: Annotated[str | None, typer.Option("--to", help="email: the address.")] = None,
    url: UrlOption = None,
    token: TokenOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Add a channel. Webhooks are signed as Standard Webhooks with the channel's secret.

    Examples: epm notify channel add webhook --tenant acme --webhook-url https://hooks.example/epm
              epm notify channel add email --to helpdesk@example.com
    """
    body: dict[str, Any] = {"kind": kind}
    if kind == "webhook":
        if not url_:
            fail("a webhook channel needs --webhook-url", as_json, code=2)
        body["url"] = url_
        if secret:
            body["secret"] = secret
    elif kind == "email":
        if not to:
            fail("an email channel needs --to", as_json, code=2)
        body["to"] = to
    else:
        fail(
            "KIND must be webhook or email (push channels are added from the console)",
            as_json,
            code=2,
        )
    with api_session(url, token, data_dir, as_json) as api:
        answer = api.call("POST", _base(tenant), body)
    shown = f"channel {answer.get('id')} added"
    if answer.get("secret"):
        shown += f"\nsigning secret (shown once): {answer['secret']}"
    emit(answer, as_json, shown)


@channel_app.command("list")
def list_(
    ctx: typer.Context,
    tenant: TenantOpt = None,
    limit: Annotated[int | None, limit_option(500)] = None,
    cursor: CursorOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonFlag = False,
) -> None:
    """List channels, oldest first, a page at a time.

    Example: epm notify channel list --tenant acme
    """
    with api_session(url, token, data_dir, as_json) as api:
        answer = api.call("GET", page_path(_base(tenant), cursor, limit))
    items = [
        {**c, "target": c.get("url") or c.get("to") or c.get("endpoint", "")}
        for c in answer.get("items", [])
    ]
    empty = "no more channels" if cursor else "no channels"
    table = render_table(items, ["id", "kind", "target"], empty)
    emit(answer, as_json, with_more(ctx, answer, table))


@channel_app.command("remove")
def remove(
    channel_id: Annotated[str, typer.Argument(metavar="CHANNEL", help="The channel id.")],
    url: UrlOption = None,
    token: TokenOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Remove a channel: it is told nothing more.

    Example: epm notify channel remove ch-0123
    """
    with api_session(url, token, data_dir, as_json) as api:
        api.call("DELETE", f"/v1/notification-channels/{channel_id}")
    emit({"channel_id": channel_id, "removed": True}, as_json, f"channel {channel_id} removed")
