"""``epm token issue|revoke``: access tokens for principals."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

import typer

from epm_cli.output import JsonFlag, emit
from epm_cli.technician.options import DataDirOption, TokenOption, UrlOption, api_session

ROLES = ("msp_admin", "msp_technician", "tenant_admin", "tenant_technician", "integrator")

app = typer.Typer(help="Access tokens (shown once when issued).", no_args_is_help=True)


@app.command("issue")
def issue(
    role: Annotated[str, typer.Option("--role", help=f"One of: {', '.join(ROLES)}.")],
    name: Annotated[str, typer.Option("--name", help="Who or what the token is for.")],
    tenant: Annotated[
        str | None,
        typer.Option(
            "--tenant", help="The tenant, for tenant roles (and a one-tenant integrator)."
        ),
    ] = None,
    url: UrlOption = None,
    token: TokenOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Issue a token; the token itself is shown only this once.

    Example: epm token issue --role tenant_technician --tenant acme --name "Ann (help desk)"
    """
    body: dict[str, str] = {"role": role, "name": name}
    if tenant is not None:
        body["tenant"] = tenant
    with api_session(url, token, data_dir, as_json) as api:
        issued = api.call("POST", "/v1/tokens", body)
    scope = f" in tenant {tenant}" if tenant else ""
    emit(
        issued,
        as_json,
        f"token {issued.get('id')} issued: {role}{scope}, for {name}\n"
        f"{issued.get('token')}\n"
        "Store it now: it is not shown again.",
    )


@app.command("revoke")
def revoke(
    token_id: Annotated[str, typer.Argument(metavar="ID", help="The token's id (not the token).")],
    url: UrlOption = None,
    token: TokenOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Revoke a token: it stops working at once (an integrator's NATS credentials too).

    Example: epm token revoke tok-3f9a0c21d4e5b6a7c8d9
    """
    with api_session(url, token, data_dir, as_json) as api:
        answer = api.call("DELETE", f"/v1/tokens/{quote(token_id, safe='')}")
    emit(answer or {"id": token_id, "revoked": True}, as_json, f"token {token_id} revoked")
