"""``epm request list|show|decide|rule-draft``: the technician's queue."""

from __future__ import annotations

import json
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

app = typer.Typer(help="Elevation requests: list, show, decide.", no_args_is_help=True)

RequestArg = Annotated[str, typer.Argument(metavar="REQUEST", help="The request id (req-...).")]


def _row(r: dict[str, Any]) -> dict[str, Any]:
    app_ = r.get("app") or {}
    return {
        **r,
        "application": app_.get("app_name") or app_.get("file_name", ""),
        "by": (r.get("decision") or {}).get("by", ""),
    }


@app.command("list")
def list_requests(
    ctx: typer.Context,
    tenant: Annotated[
        str | None,
        typer.Option("--tenant", help="One tenant (local view); leave out for the global view."),
    ] = None,
    status: Annotated[
        str, typer.Option("--status", help="open, approved, denied, expired or all.")
    ] = "open",
    limit: Annotated[int | None, limit_option(200)] = None,
    cursor: CursorOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonFlag = False,
) -> None:
    """List requests: one tenant's (--tenant) or every tenant's (MSP), a page at a time.

    Examples: epm request list --tenant acme;  epm request list --status all --json
    """
    base = f"/v1/tenants/{tenant}/requests" if tenant else "/v1/requests"
    path = page_path(base, cursor, limit, {"status": status})
    with api_session(url, token, data_dir, as_json) as api:
        answer = api.call("GET", path)
    items = [_row(r) for r in answer.get("items", [])]
    table = render_table(
        items, ["id", "tenant", "user", "application", "status", "by"], f"no {status} requests"
    )
    emit(answer, as_json, with_more(ctx, answer, table))


@app.command("show")
def show(
    request_id: RequestArg,
    url: UrlOption = None,
    token: TokenOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Show one request: what, who, the decision and its history.

    Example: epm request show req-0123
    """
    with api_session(url, token, data_dir, as_json) as api:
        answer = api.call("GET", f"/v1/requests/{request_id}")
    app_ = answer.get("app", {})
    lines = [
        f"{answer.get('id')}  {answer.get('status')}",
        f"who:   {answer.get('user')} on {answer.get('device_id')} ({answer.get('tenant')})",
        f"what:  {app_.get('file_name')}  {app_.get('app_name')}  {app_.get('publisher')}",
        f"       sha256 {app_.get('sha256')}",
        f"       {app_.get('path')}",
        f"why:   {answer.get('reason')}",
        *_decision_lines(answer),
        "history:",
        *(f"  {h['seq']:>8}  {h['time']}  {h['type']}" for h in answer.get("history", [])),
    ]
    emit(answer, as_json, "\n".join(lines))


def _decision_lines(answer: dict[str, Any]) -> list[str]:
    """Who decided, in which scope, by which rule, when and why (the reason is the
    Approved/Denied event's, in the history)."""
    decision = answer.get("decision")
    if not isinstance(decision, dict):
        return ["decision: none yet" if answer.get("status") == "open" else "decision: none"]
    kind = f" ({decision['by_kind']})" if decision.get("by_kind") else ""
    lines = [
        f"decision: {decision.get('decision')} ({decision.get('scope')}) by "
        f"{decision.get('by')}{kind} at {decision.get('at')}"
    ]
    if decision.get("rule_id"):
        lines.append(f"          rule {decision['rule_id']}")
    reason = decision.get("reason")
    if not reason:
        decided = [h for h in answer.get("history", []) if h.get("type") in DECIDED_EVENTS]
        reason = ((decided[-1].get("data") or {}) if decided else {}).get("reason")
    if reason:
        lines.append(f"          reason: {reason}")
    return lines


DECIDED_EVENTS = ("Approved", "Denied")


@app.command("decide")
def decide(
    request_id: RequestArg,
    approve: Annotated[bool, typer.Option("--approve/--deny", help="Approve or deny.")],
    scope: Annotated[
        str,
        typer.Option(
            "--scope", help="once (this user), tenant (a tenant rule) or global (all customers)."
        ),
    ] = "once",
    rule_name: Annotated[str | None, typer.Option("--rule-name", help="Name of the rule.")] = None,
    rule: Annotated[
        str | None,
        typer.Option(
            "--rule",
            help='Rule match as JSON, e.g. \'{"publisher": "Contoso*"}\' (default: the draft).',
        ),
    ] = None,
    reason: Annotated[str | None, typer.Option("--reason", help="Why (kept in the audit).")] = None,
    url: UrlOption = None,
    token: TokenOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Approve or deny a request; the first decision wins (a later one gets a conflict).

    Examples: epm request decide req-0123 --approve --scope tenant --rule-name "Notepad++"
              epm request decide req-0123 --deny --scope global
    """
    if scope not in ("once", "tenant", "global"):
        fail("--scope must be once, tenant or global", as_json, code=2)
    body: dict[str, Any] = {"decision": "approve" if approve else "deny", "scope": scope}
    if rule_name:
        body["rule_name"] = rule_name
    if reason:
        body["reason"] = reason
    if rule:
        try:
            body["rule"] = json.loads(rule)
        except json.JSONDecodeError as exc:
            fail(f"--rule is not valid JSON: {exc}", as_json, code=2)
    with api_session(url, token, data_dir, as_json) as api:
        answer = api.call("POST", f"/v1/requests/{request_id}/decision", body)
    extra = f", rule {answer['rule_id']}" if answer.get("rule_id") else ""
    emit(answer, as_json, f"{request_id}: {answer.get('decision')} ({scope}){extra}")


@app.command("rule-draft")
def rule_draft(
    request_id: RequestArg,
    url: UrlOption = None,
    token: TokenOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonFlag = False,
) -> None:
    """The rule a tenant/global decision would create, pre-filled from the request.

    Example: epm request rule-draft req-0123 --json
    """
    with api_session(url, token, data_dir, as_json) as api:
        answer = api.call("GET", f"/v1/requests/{request_id}/rule-draft")
    emit(answer, as_json, json.dumps(answer, indent=2))
