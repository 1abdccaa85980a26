"""``epm offline policy get|set``, ``epm offline respond``, ``epm offline codes``,
``epm offline rotate-key|revoke-codes|lift-lockout``: the help desk's offline tools and the
tenant's offline policy (API.md). Codes are shown once, never logged."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from epm_cli.output import JsonFlag, emit, fail
from epm_cli.technician.options import DataDirOption, TokenOption, UrlOption, api_session

app = typer.Typer(
    help="Offline access: the tenant's policy, help-desk response codes, offline access codes.",
    no_args_is_help=True,
)
policy_app = typer.Typer(help="The tenant's offline policy.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")

TenantOption = Annotated[str, typer.Option("--tenant", help="The tenant id, e.g. acme.")]
DeviceOption = Annotated[
    str, typer.Option("--device", help="The computer's device id (see 'epm device list').")
]

POLICY_FIELDS = (
    "challenge_response",
    "app_codes",
    "admin_codes",
    "self_service",
    "response_any_app",
    "max_admin_minutes",
)


def _policy_text(policy: dict[str, Any]) -> str:
    width = max(len(k) for k in POLICY_FIELDS)
    return "\n".join(f"{k.ljust(width)}  {policy.get(k)}" for k in POLICY_FIELDS if k in policy)


@policy_app.command("get")
def get_policy(
    tenant: TenantOption,
    url: UrlOption = None,
    token: TokenOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Show the tenant's offline policy (the defaults until an admin sets it).

    Example: epm offline policy get --tenant acme
    """
    with api_session(url, token, data_dir, as_json) as api:
        policy = api.call("GET", f"/v1/tenants/{tenant}/offline-policy")
    emit(policy, as_json, _policy_text(policy))


@policy_app.command("set")
def set_policy(
    tenant: TenantOption,
    challenge_response: Annotated[
        bool | None,
        typer.Option(
            "--challenge-response/--no-challenge-response",
            help="Help-desk request/response codes.",
            show_default=False,
        ),
    ] = None,
    app_codes: Annotated[
        bool | None,
        typer.Option(
            "--app-codes/--no-app-codes",
            help="Offline codes that elevate an application.",
            show_default=False,
        ),
    ] = None,
    admin_codes: Annotated[
        bool | None,
        typer.Option(
            "--admin-codes/--no-admin-codes",
            help="Offline codes for temporary full admin.",
            show_default=False,
        ),
    ] = None,
    self_service: Annotated[
        bool | None,
        typer.Option(
            "--self-service/--no-self-service",
            help="Users generate their own codes with 'epm-agent offline generate' (online).",
            show_default=False,
        ),
    ] = None,
    response_any_app: Annotated[
        bool | None,
        typer.Option(
            "--response-any-app/--no-response-any-app",
            help="A help-desk app grant may leave out the application's SHA-256.",
            show_default=False,
        ),
    ] = None,
    max_admin_minutes: Annotated[
        int | None,
        typer.Option(
            "--max-admin-minutes", min=1, max=1440, help="Longest full-admin grant (minutes)."
        ),
    ] = None,
    url: UrlOption = None,
    token: TokenOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Change some of the tenant's offline policy; the rest stays as it is.

    Every enrolled computer of the tenant gets the new policy when it is next online.

    Example: epm offline policy set --tenant acme --admin-codes --max-admin-minutes 120
    """
    changes: dict[str, Any] = {
        k: v
        for k, v in {
            "challenge_response": challenge_response,
            "app_codes": app_codes,
            "admin_codes": admin_codes,
            "self_service": self_service,
            "response_any_app": response_any_app,
            "max_admin_minutes": max_admin_minutes,
        }.items()
        if v is not None
    }
    if not changes:
        fail(
            "nothing to change: give at least one switch, e.g. --admin-codes or "
            "--max-admin-minutes 120 (see --help)",
            as_json,
            code=2,
        )
    path = f"/v1/tenants/{tenant}/offline-policy"
    with api_session(url, token, data_dir, as_json) as api:
        # PUT replaces the whole object: start from what is there now
        policy = api.call("GET", path) | changes
        policy = api.call("PUT", path, policy)
    emit(policy, as_json, _policy_text(policy))


@app.command("respond")
def respond(
    tenant: TenantOption,
    device: DeviceOption,
    request_code: Annotated[
        str, typer.Option("--request-code", help="The 6 digits the computer shows.")
    ],
    sha256: Annotated[
        str | None,
        typer.Option(
            "--sha256", help="Grant this application (its SHA-256, as the user reads it)."
        ),
    ] = None,
    admin: Annotated[
        int | None,
        typer.Option("--admin", metavar="MINUTES", min=1, help="Grant full admin for MINUTES."),
    ] = None,
    any_app: Annotated[
        bool,
        typer.Option(
            "--any-app", help="Grant the application without its SHA-256 (policy must allow)."
        ),
    ] = False,
    url: UrlOption = None,
    token: TokenOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonFlag = False,
) -> None:
    """A response code for the request code a computer shows; read it back to the user.

    Example: epm offline respond --tenant acme --device d-0123 --request-code 123456 --admin 30
    """
    if sum(x is not None and x is not False for x in (sha256, admin, any_app or None)) != 1:
        fail("choose what to grant: --sha256 HASH, --admin MINUTES or --any-app", as_json, 2)
    body: dict[str, Any] = {"request_code": request_code}
    if admin is not None:
        body |= {"grant": "admin", "minutes": admin}
    else:
        body |= {"grant": "app"} | ({"sha256": sha256} if sha256 else {})
    with api_session(url, token, data_dir, as_json) as api:
        answer = api.call("POST", f"/v1/tenants/{tenant}/devices/{device}/offline-response", body)
    what = f"full admin for {admin} minutes" if admin is not None else "the application"
    emit(
        answer,
        as_json,
        f"{answer.get('response_code')}\n(read it to the user: {what} on {device}, once)",
    )


@app.command("codes")
def codes(
    tenant: TenantOption,
    device: DeviceOption,
    purpose: Annotated[
        str, typer.Option("--purpose", help="app (elevate an application) or admin (full admin).")
    ],
    count: Annotated[int, typer.Option("--count", min=1, max=50, help="How many codes.")] = 1,
    sha256: Annotated[
        str | None, typer.Option("--sha256", help="app codes: only for this application.")
    ] = None,
    minutes: Annotated[
        int | None,
        typer.Option("--minutes", help="admin codes: 15, 30, 60, 120, 240, 480, 720 or 1440."),
    ] = None,
    expires_in: Annotated[
        int | None,
        typer.Option(
            "--expires-in",
            metavar="SECONDS",
            help="Valid at least this long (default 7 days), through the end of that UTC day.",
        ),
    ] = None,
    url: UrlOption = None,
    token: TokenOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonFlag = False,
) -> None:
    """One-time offline access codes for one computer, shown once (only hashes are kept).

    Example: epm offline codes --tenant acme --device d-0123 --purpose admin --minutes 60
    """
    if purpose not in ("app", "admin"):
        fail(f"--purpose is app or admin (got {purpose!r})", as_json, 2)
    body: dict[str, Any] = {"purpose": purpose, "count": count}
    for key, value in (("sha256", sha256), ("minutes", minutes), ("expires_in", expires_in)):
        if value is not None:
            body[key] = value
    with api_session(url, token, data_dir, as_json) as api:
        answer = api.call("POST", f"/v1/tenants/{tenant}/devices/{device}/offline-codes", body)
    lines = [f"{c.get('code')}  (until {c.get('expires_at')})" for c in answer.get("codes", [])]
    emit(answer, as_json, "\n".join([*lines, "(shown once: hand them over now)"]))


@app.command("rotate-key")
def rotate_key(
    tenant: TenantOption,
    device: DeviceOption,
    url: UrlOption = None,
    token: TokenOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Rotate a computer's offline key: its unused codes stop working once it reads the change.

    Example: epm offline rotate-key --tenant acme --device d-0123
    """
    with api_session(url, token, data_dir, as_json) as api:
        answer = api.call("POST", f"/v1/tenants/{tenant}/devices/{device}/offline-key/rotate")
    emit(answer, as_json, f"{device}: offline key version {answer.get('key_version')}")


@app.command("revoke-codes")
def revoke_codes(
    tenant: TenantOption,
    device: DeviceOption,
    url: UrlOption = None,
    token: TokenOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Void every unused offline code of a computer (a key rotation).

    Example: epm offline revoke-codes --tenant acme --device d-0123
    """
    with api_session(url, token, data_dir, as_json) as api:
        answer = api.call("DELETE", f"/v1/tenants/{tenant}/devices/{device}/offline-codes")
    emit(answer, as_json, f"{device}: unused codes void (key version {answer.get('key_version')})")


@app.command("lift-lockout")
def lift_lockout(
    tenant: TenantOption,
    device: Annotated[
        str | None,
        typer.Argument(
            help="The computer's device id (see 'epm device list').", show_default=False
        ),
    ] = None,
    device_option: Annotated[
        str | None,
        typer.Option("--device", help="The same, as an option (like the other commands)."),
    ] = None,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Why (kept in the audit trail).")
    ] = None,
    url: UrlOption = None,
    token: TokenOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonFlag = False,
) -> None:
    """End a computer's lockout after wrong offline codes; it takes effect when the computer
    is next online (epm-agent status, request or sync).

    Example: epm offline lift-lockout --tenant acme d-0123 --reason "user mistyped"
    """
    if device and device_option and device != device_option:
        fail(f"two devices given: {device} and --device {device_option}; give one", as_json, 2)
    chosen = device or device_option
    if not chosen:
        fail(
            "give the computer's device id, e.g. epm offline lift-lockout --tenant acme d-0123 "
            "(see 'epm device list')",
            as_json,
            2,
        )
    body: dict[str, Any] = {"reason": reason} if reason else {}
    with api_session(url, token, data_dir, as_json) as api:
        answer = api.call("POST", f"/v1/tenants/{tenant}/devices/{chosen}/lockout-lift", body)
    emit(
        answer,
        as_json,
        f"{chosen}: lockout lifted; the computer applies it when it is next online "
        "(epm-agent status, request or sync)",
    )
