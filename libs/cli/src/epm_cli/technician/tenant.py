"""``epm tenant create|list``: customer tenants."""

from __future__ import annotations

from typing import Annotated

import typer

from epm_cli.output import JsonFlag, emit
from epm_cli.technician.options import (
    CursorOption,
    DataDirOption,
    TokenOption,
    UrlOption,
    api_session,
    limit_option,
    literal_help,
    page_path,
    render_table,
    with_more,
)

app = typer.Typer(help="Customer tenants (msp_admin).", no_args_is_help=True)


@app.command("create")
def create(
    tenant_id: Annotated[
        str,
        typer.Argument(
            metavar="ID", help=literal_help("Tenant id: [a-z0-9][a-z0-9-]{0,62}, e.g. acme.")
        ),
    ],
    name: Annotated[str, typer.Option("--name", help="Display name, e.g. 'Acme Corp'.")],
    url: UrlOption = None,
    token: TokenOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a customer tenant.

    Example: epm tenant create acme --name "Acme Corp"
    """
    with api_session(url, token, data_dir, as_json) as api:
        tenant = api.call("POST", "/v1/tenants", {"id": tenant_id, "name": name})
    emit(
        tenant,
        as_json,
        f"tenant {tenant.get('id', tenant_id)} created ({tenant.get('name', name)})",
    )


@app.command("list")
def list_(
    ctx: typer.Context,
    limit: Annotated[int | None, limit_option(500)] = None,
    cursor: CursorOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonFlag = False,
) -> None:
    """List customer tenants, a page at a time.

    Example: epm tenant list --json
    """
    with api_session(url, token, data_dir, as_json) as api:
        answer = api.call("GET", page_path("/v1/tenants", cursor, limit))
    items = answer.get("items", []) if isinstance(answer, dict) else []
    emit(
        answer,
        as_json,
        with_more(ctx, answer, render_table(items, ["id", "name"], "no tenants yet")),
    )
