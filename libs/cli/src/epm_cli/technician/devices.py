"""``epm enrollment-token create`` and ``epm device list|revoke``: enrolling and managing computers."""

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
    page_path,
    render_table,
    with_more,
)

enrollment_app = typer.Typer(help="One-time tokens that enroll a device.", no_args_is_help=True)
device_app = typer.Typer(help="Enrolled computers of a tenant.", no_args_is_help=True)

TenantOption = Annotated[str, typer.Option("--tenant", help="The tenant id, e.g. acme.")]


@enrollment_app.command("create")
def create_enrollment_token(
    tenant: TenantOption,
    ttl: Annotated[
        int | None, typer.Option("--ttl", help="Lifetime in seconds (default 7 days).")
    ] = None,
    url: UrlOption = None,
    token: TokenOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a one-time enrollment token (shown once) for one device of TENANT.

    Example: epm enrollment-token create --tenant acme
    then on the computer: epm-agent enroll --url http://127.0.0.1:8080 --enrollment-token <token>
    """
    with api_session(url, token, data_dir, as_json) as api:
        answer = api.call(
            "POST", f"/v1/tenants/{tenant}/enrollment-tokens", {"ttl_seconds": ttl} if ttl else {}
        )
    emit(
        answer,
        as_json,
        f"{answer.get('token')}\n(one device, expires {answer.get('expires_at')}; shown once)",
    )


@device_app.command("list")
def list_devices(
    ctx: typer.Context,
    tenant: TenantOption,
    offline_open: Annotated[
        bool,
        typer.Option("--offline-open", help="Only computers with any open request."),
    ] = False,
    limit: Annotated[int | None, limit_option(500)] = None,
    cursor: CursorOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonFlag = False,
) -> None:
    """List a tenant's computers, a page at a time: those with an open request first,
    revoked ones last.

    Example: epm device list --tenant acme
    """
    filters = {"offline": "open" if offline_open else None}
    path = page_path(f"/v1/tenants/{tenant}/devices", cursor, limit, filters)
    with api_session(url, token, data_dir, as_json) as api:
        answer = api.call("GET", path)
    items = answer.get("items", [])
    empty = "no more devices" if cursor else "no devices enrolled"
    if offline_open and not cursor:
        empty = "no computer has an open request"
    table = render_table(items, ["device_id", "hostname", "offline_open", "revoked"], empty)
    emit(answer, as_json, with_more(ctx, answer, table))


@device_app.command("revoke")
def revoke_device(
    device_id: Annotated[str, typer.Argument(metavar="DEVICE", help="The device id (d-...).")],
    tenant: TenantOption,
    url: UrlOption = None,
    token: TokenOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Revoke a device: its messages are refused from now on.

    Example: epm device revoke d-0123456789abcdef --tenant acme
    """
    with api_session(url, token, data_dir, as_json) as api:
        api.call("DELETE", f"/v1/tenants/{tenant}/devices/{device_id}")
    emit({"device_id": device_id, "revoked": True}, as_json, f"device {device_id} revoked")
