"""``epm rule list|create|disable``: tenant and global (all customers) rules."""

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

app = typer.Typer(help="Elevation rules: evaluated before anyone is asked.", no_args_is_help=True)

TenantOpt = Annotated[
    str | None,
    typer.Option("--tenant", help="A tenant's rules; leave out for global rules (all customers)."),
]


def _summary(rule: dict[str, Any]) -> dict[str, Any]:
    match = rule.get("match") or {}
    return {**rule, "matches": " ".join(f"{k}={v}" for k, v in match.items() if v)}


@app.command("list")
def list_rules(
    ctx: typer.Context,
    tenant: TenantOpt = None,
    limit: Annotated[int | None, limit_option(500)] = None,
    cursor: CursorOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonFlag = False,
) -> None:
    """List a tenant's rules, or the global ones.

    Example: epm rule list --tenant acme
    """
    path = f"/v1/tenants/{tenant}/rules" if tenant else "/v1/rules"
    with api_session(url, token, data_dir, as_json) as api:
        answer = api.call("GET", page_path(path, cursor, limit))
    items = [_summary(r) for r in answer.get("items", [])]
    table = render_table(items, ["id", "name", "effect", "enabled", "matches"], "no rules")
    emit(answer, as_json, with_more(ctx, answer, table))


@app.command("create")
def create_rule(
    name: Annotated[str, typer.Option("--name", help="A name people recognise.")],
    allow: Annotated[bool, typer.Option("--allow/--deny", help="Allow or deny what matches.")],
    tenant: TenantOpt = None,
    sha256: Annotated[str | None, typer.Option("--sha256")] = None,
    publisher: Annotated[
        str | None, typer.Option("--publisher", help="Wildcards * and ? work.")
    ] = None,
    app_name: Annotated[str | None, typer.Option("--app-name")] = None,
    file_name: Annotated[str | None, typer.Option("--file-name")] = None,
    path: Annotated[str | None, typer.Option("--path", help=r"e.g. 'C:\Program Files\*'")] = None,
    url: UrlOption = None,
    token: TokenOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a rule; every field given must match. A matching deny beats any allow.

    Example: epm rule create --tenant acme --name "7-Zip" --allow --publisher "Igor Pavlov"
    """
    match = {
        k: v
        for k, v in {
            "sha256": sha256,
            "publisher": publisher,
            "app_name": app_name,
            "file_name": file_name,
            "path": path,
        }.items()
        if v
    }
    if not match:
        fail(
            "give at least one of --sha256, --publisher, --app-name, --file-name, --path",
            as_json,
            code=2,
        )
    body = {"name": name, "effect": "allow" if allow else "deny", "match": match}
    target = f"/v1/tenants/{tenant}/rules" if tenant else "/v1/rules"
    with api_session(url, token, data_dir, as_json) as api:
        answer = api.call("POST", target, body)
    emit(answer, as_json, f"rule {answer.get('id')} created ({body['effect']})")


@app.command("disable")
def disable_rule(
    rule_id: Annotated[str, typer.Argument(metavar="RULE", help="The rule id.")],
    url: UrlOption = None,
    token: TokenOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Disable a rule (its history is kept).

    Example: epm rule disable rule-0123
    """
    with api_session(url, token, data_dir, as_json) as api:
        api.call("DELETE", f"/v1/rules/{rule_id}")
    emit({"rule_id": rule_id, "enabled": False}, as_json, f"rule {rule_id} disabled")
