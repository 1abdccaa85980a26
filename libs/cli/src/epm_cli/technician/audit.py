"""``epm audit list|export|verify``: the audit trail over ``/v1/audit*``.

``verify --file`` checks an export offline: it recomputes every chain and
every checkpoint signature itself (epm_audit.verify), with the public keys
given by ``--keys FILE`` (what ``GET /v1/audit/keys`` answers), else fetched
from the server. Exit code 1, with the verdict and an ``error``, when the
trail does not verify.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import httpx
import orjson
import typer
from epm_audit.checkpoint import parse_public_keys
from epm_audit.verify import TrailVerdict, verify_lines

from epm_cli.output import JsonFlag, emit, fail
from epm_cli.technician.api import default_data_dir, default_token, default_url
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
from epm_cli.technician.problem import problem_message

app = typer.Typer(help="The audit trail: list, export, verify, keys.", no_args_is_help=True)

TenantOption = Annotated[
    str | None,
    typer.Option("--tenant", help="One tenant's chain ('_global': the MSP's); default: all yours."),
]
COLUMNS = ["seq", "tenant", "type", "actor", "received_at", "device_time"]


@app.command("list")
def list_records(
    ctx: typer.Context,
    tenant: TenantOption = None,
    type_: Annotated[str | None, typer.Option("--type", help="Event name, e.g. Approved.")] = None,
    device: Annotated[str | None, typer.Option(help="Device id.")] = None,
    user: Annotated[str | None, typer.Option(help="Endpoint user.")] = None,
    request: Annotated[str | None, typer.Option(help="Request id.")] = None,
    since: Annotated[str | None, typer.Option(help="Received at or after (RFC 3339).")] = None,
    until: Annotated[str | None, typer.Option(help="Received before (RFC 3339).")] = None,
    cursor: CursorOption = None,
    limit: Annotated[int | None, limit_option(500)] = None,
    url: UrlOption = None,
    token: TokenOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonFlag = False,
) -> None:
    """One page of audit records (GET /v1/audit).

    Example: epm audit list --tenant acme --type Approved --since 2025-03-01T00:00:00Z
    """
    params = {
        "tenant": tenant,
        "type": type_,
        "device": device,
        "user": user,
        "request": request,
        "since": since,
        "until": until,
    }
    with api_session(url, token, data_dir, as_json) as api:
        page = api.call("GET", page_path("/v1/audit", cursor, limit, params))
    rows = [
        {**r, "actor": f"{r['actor']['kind']}:{r['actor']['id']}"} for r in page.get("items", [])
    ]
    emit(page, as_json, with_more(ctx, page, render_table(rows, COLUMNS, "no audit records")))


def _client(url: str | None, token: str | None, data_dir: Path | None) -> httpx.Client:
    where = data_dir or default_data_dir()
    secret = token or default_token(where)
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    return httpx.Client(
        base_url=url or default_url(where),
        headers=headers,
        timeout=httpx.Timeout(30.0, read=None),
    )


@app.command("export")
def export(
    tenant: TenantOption = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to FILE instead of stdout.")
    ] = None,
    url: UrlOption = None,
    token: TokenOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Every record as NDJSON, streamed (GET /v1/audit/export).

    Example: epm audit export --tenant acme > acme-audit.ndjson
    """
    params = {"tenant": tenant} if tenant else {}
    records = 0
    try:
        with (
            _client(url, token, data_dir) as client,
            client.stream("GET", "/v1/audit/export", params=params) as response,
        ):
            if response.status_code >= 400:
                message = problem_message(
                    response.status_code, response.read(), "authorization" in client.headers
                )
                fail(message, as_json, status=response.status_code)
            out = output.open("wb") if output else sys.stdout.buffer
            try:
                for chunk in response.iter_bytes():
                    out.write(chunk)
                    records += chunk.count(b"\n")
            finally:
                if output:
                    out.close()
                else:
                    out.flush()
    except httpx.HTTPError as exc:
        fail(
            f"the export from {url or 'the gateway'} broke off ({exc.__class__.__name__}: {exc});"
            " run it again (an export is a complete snapshot only when it ends)",
            as_json,
        )
    if output:
        emit({"file": str(output), "records": records}, as_json, f"{records} records -> {output}")


@app.command("keys")
def keys_command(
    url: UrlOption = None,
    token: TokenOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonFlag = False,
) -> None:
    """The public keys of the checkpoint signatures (GET /v1/audit/keys), for --keys.

    Example: epm audit keys --json > audit-keys.json
    """
    with api_session(url, token, data_dir, as_json) as api:
        found = api.call("GET", "/v1/audit/keys")
    human = render_table(found.get("items", []), ["key_id", "algorithm", "public_key"], "no keys")
    emit(found, as_json, human)


@app.command("verify")
def verify(
    tenant: TenantOption = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            exists=True,
            dir_okay=False,
            help="Verify this export offline instead of asking the server.",
        ),
    ] = None,
    keys: Annotated[
        Path | None,
        typer.Option(
            "--keys",
            exists=True,
            dir_okay=False,
            help="Public keys (as GET /v1/audit/keys answers) for --file; default: fetched.",
        ),
    ] = None,
    url: UrlOption = None,
    token: TokenOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Recompute the hash chains and check the checkpoint signatures; names the first bad record.

    Example: epm audit verify --file acme-audit.ndjson --keys audit-keys.json
    """
    if file is None:
        params = f"?tenant={tenant}" if tenant else ""
        with api_session(url, token, data_dir, as_json) as api:
            result = api.call("GET", f"/v1/audit/verify{params}")
        report(result, as_json)
        return
    if tenant:
        fail("--tenant does not apply to --file: the file holds what was exported", as_json, 2)
    if keys is not None:
        try:
            public = parse_public_keys(orjson.loads(keys.read_bytes()))
        except (orjson.JSONDecodeError, ValueError) as exc:
            fail(f"{keys} is not a key list as GET /v1/audit/keys answers: {exc}", as_json)
    else:
        with api_session(url, token, data_dir, as_json) as api:
            public = parse_public_keys(api.call("GET", "/v1/audit/keys"))
    with file.open("rb") as lines:
        verdict: TrailVerdict = verify_lines(lines, public)
    report(verdict.to_dict() | {"file": str(file)}, as_json)


def report(result: dict[str, Any], as_json: bool) -> None:
    if result.get("ok"):
        emit(
            result,
            as_json,
            f"ok: {result['records']} records, {result.get('checkpoints', 0)} checkpoint"
            f" signatures, {result.get('signed_records', 0)} records signed; head {result['head']}",
        )
        return
    where = f"line {result['line']}, " if result.get("line") else ""
    message = (
        f"the audit trail does not verify: record seq {result.get('first_bad')} ({where}"
        f"tenant {result.get('tenant')}): {result.get('problem')}"
    )
    if as_json:
        sys.stdout.write(orjson.dumps({"error": message, **result}).decode() + "\n")
    else:
        typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)
