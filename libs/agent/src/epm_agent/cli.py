"""``epm-agent``: the reference agent on the command line (see API.md, ``epm-agent``).

Every sub-command accepts --state-dir, --offline and --json. With --json the
command prints exactly one JSON object; a failure exits non-zero with
``{"error": "..."}``. Secrets (keys, tokens, codes) are never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import orjson

from epm_agent.agent import Agent, AgentStatus, RequestOutcome
from epm_agent.clock import clock_from_env
from epm_agent.errors import AgentError, NotImplementedYet
from epm_agent.nats_tls import NATS_CA_ENV
from epm_agent.offline import CodeRefused, Granted
from epm_agent.simulate import ProgressBar, simulate
from epm_agent.state import STATE_DIR_ENV, default_state_dir

EXIT_FAILED = 1
EXIT_NOT_IMPLEMENTED = 2
EXIT_USAGE = 2

EXAMPLES = f"""\
examples:
  epm-agent enroll --url http://127.0.0.1:8080 --enrollment-token TOKEN
  epm-agent enroll --url https://epm.example.com --enrollment-token TOKEN --nats-ca ca.crt
  epm-agent request --exe /usr/bin/tool --user alice --reason "install the printer driver"
  epm-agent request --exe 'C:\\Tools\\setup.exe' --sha256 HASH --publisher "Acme" \\
      --app-name "Acme Setup" --user alice --reason "update" --wait 60
  epm-agent status --json
  epm-agent offline request-code --exe /usr/bin/tool      (offline: call the help desk)
  epm-agent offline respond 7K3M-Q9XD-2HBA
  epm-agent offline redeem 0A2B-C3D4-E5F6 --exe /usr/bin/tool
  epm-agent sync                                          (upload the offline log)

EPM_AGENT_NOW (tests only) fixes this agent's clock, e.g. 2030-01-02T03:04:05Z.

The state dir defaults to ${STATE_DIR_ENV}, else ~/.epm-agent.
"""

NATS_CA_HELP = (
    "PEM file of the CA that signed the NATS servers' certificate (a private CA): kept in "
    "the state dir and trusted instead of the system's CAs by every later command "
    f"(default ${NATS_CA_ENV}; else the CA the server hands out at enrollment, if any)"
)


class _Parser(argparse.ArgumentParser):
    """Usage errors follow --json too: one ``{"error": ...}`` object, exit 2."""

    json_errors = False

    def error(self, message: str) -> NoReturn:
        if _Parser.json_errors:
            _print_json({"error": f"{self.prog}: {message}"})
            sys.exit(EXIT_USAGE)
        super().error(message)


def _common() -> _Parser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--state-dir",
        type=Path,
        default=argparse.SUPPRESS,
        help=f"where this agent keeps its identity and requests (default ${STATE_DIR_ENV}, "
        "else ~/.epm-agent)",
    )
    common.add_argument(
        "--offline",
        action="store_true",
        default=argparse.SUPPRESS,
        help="behave as if the server were unreachable",
    )
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help='print exactly one JSON object (errors: {"error": ...})',
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = _Parser(
        prog="epm-agent",
        description="The EPM endpoint agent: enroll this machine, ask for elevation, "
        "and see what was decided.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    def command(name: str, help: str, epilog: str | None = None) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=help,
            description=help,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=[common],
        )

    enroll = command(
        "enroll",
        "Enroll this machine with a one-time enrollment token.",
        "example:\n  epm-agent enroll --url http://127.0.0.1:8080 --enrollment-token TOKEN",
    )
    enroll.add_argument("--url", required=True, help="the EPM server (gateway) URL")
    enroll.add_argument(
        "--enrollment-token", required=True, help="from 'epm enrollment-token create'"
    )
    enroll.add_argument("--hostname", help="the name the help desk sees (default: this host's)")
    enroll.add_argument("--nats-ca", type=Path, metavar="FILE", help=NATS_CA_HELP)
    enroll.set_defaults(run=_enroll)

    request = command(
        "request",
        "Ask for elevation of an application.",
        "examples:\n"
        '  epm-agent request --exe /usr/bin/tool --user alice --reason "update"\n'
        "  epm-agent request --exe 'C:\\Tools\\setup.exe' --sha256 HASH --user alice "
        '--reason "install" --wait 120',
    )
    request.add_argument(
        "--exe",
        required=True,
        help="the executable; its SHA-256 is computed when the file exists here",
    )
    request.add_argument("--sha256", help="the SHA-256 when --exe is not a file on this machine")
    request.add_argument("--publisher", default="", help="the code-signing publisher")
    request.add_argument("--app-name", default="", help="the application's product name")
    request.add_argument("--command-line", default="", help="the full command line")
    request.add_argument("--user", required=True, help="who asks")
    request.add_argument("--reason", required=True, help="why, in the user's words")
    request.add_argument(
        "--wait",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="wait up to SECONDS for a technician's decision (default 0: return what the "
        "server answered at once, a rule's decision included). An 'approve once' that "
        "arrives while waiting is used by this run: the next run asks again",
    )
    request.set_defaults(run=_request)

    status = command("status", "Show this device, its policy and its requests.")
    status.set_defaults(run=_status)

    offline = command("offline", "Offline codes, for when the server cannot be reached.")
    offline_commands = offline.add_subparsers(
        dest="offline_command", metavar="COMMAND", parser_class=_Parser
    )
    offline_commands.required = True

    def offline_command(name: str, help: str, epilog: str) -> argparse.ArgumentParser:
        return offline_commands.add_parser(
            name,
            help=help,
            description=help,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=[common],
        )

    request_code = offline_command(
        "request-code",
        "Show a 6-digit request code for the help desk (works offline).",
        "examples:\n  epm-agent offline request-code --exe /usr/bin/tool\n"
        "  epm-agent offline request-code --admin 30\n"
        "Read the code to the help desk; enter their answer with 'epm-agent offline respond'.",
    )
    what = request_code.add_mutually_exclusive_group(required=True)
    what.add_argument("--exe", help="the application to elevate")
    what.add_argument("--admin", type=int, metavar="MINUTES", help="temporary full admin")
    request_code.add_argument("--sha256", help="with --exe: when it is not a file here")
    request_code.add_argument("--user", default="", help="who asks (default: this user)")
    request_code.set_defaults(run=_request_code)

    respond = offline_command(
        "respond",
        "Enter the help desk's response code (XXXX-XXXX-XXXX; case and dashes do not matter).",
        "example:\n  epm-agent offline respond 7K3M-Q9XD-2HBA",
    )
    respond.add_argument("code")
    respond.add_argument("--user", default="", help="who uses it (default: who asked)")
    respond.set_defaults(run=_respond)

    redeem = offline_command(
        "redeem",
        "Redeem an offline access code (works offline, once).",
        "examples:\n  epm-agent offline redeem 0A2B-C3D4-E5F6 --exe /usr/bin/tool\n"
        "  epm-agent offline redeem 0A2B-C3D4-E5F6      (a full-admin code)",
    )
    redeem.add_argument("code")
    redeem.add_argument("--exe", help="the application to elevate (application codes)")
    redeem.add_argument("--sha256", help="with --exe: when it is not a file here")
    redeem.add_argument("--user", default="", help="who uses it (default: this user)")
    redeem.set_defaults(run=_redeem)

    generate = offline_command(
        "generate",
        "Generate an offline access code for later (online only; the policy must allow it).",
        "examples:\n  epm-agent offline generate --purpose app --exe /usr/bin/tool\n"
        "  epm-agent offline generate --purpose admin --minutes 30",
    )
    generate.add_argument("--purpose", required=True, choices=("app", "admin"))
    generate.add_argument("--exe", help="pin the code to this application")
    generate.add_argument("--sha256", help="pin the code to this SHA-256")
    generate.add_argument("--minutes", type=int, help="admin minutes (15, 30, 60, 120, ...)")
    generate.set_defaults(run=_generate)

    sync = command(
        "sync",
        "Upload the offline log and read decisions, policy and confirmations.",
        "examples:\n  epm-agent sync\n  epm-agent sync --wait 60 --json\n"
        '{"sent", "confirmed", "pending"}: records uploaded now, records the server has '
        'accepted, records it has not processed (yet); and "refused", "refusals" '
        "({kind: [record numbers]}) if the server refused records (a security alert).",
    )
    sync.add_argument(
        "--wait",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="wait up to SECONDS for the server to confirm what was uploaded (default 10)",
    )
    sync.set_defaults(run=_sync)

    simulate = command(
        "simulate",
        "Simulate a fleet of agents: enroll, go offline, redeem codes, reconnect at once.",
        "example:\n  epm-agent simulate --url http://127.0.0.1:8080 --token TOKEN "
        "--tenant acme --devices 20 --events 10\n"
        "The token must be allowed to create enrollment tokens and offline codes for the "
        "tenant (tenant_admin or msp_admin). Each event is one code redeemed and one "
        "elevation (two offline log records).",
    )
    simulate.add_argument("--url", required=True, help="the EPM server (gateway) URL")
    simulate.add_argument("--token", required=True, help="an API token (tenant_admin or above)")
    simulate.add_argument("--tenant", required=True, help="the tenant the devices enroll in")
    simulate.add_argument("--devices", type=int, required=True, help="how many devices")
    simulate.add_argument(
        "--events", type=int, required=True, help="codes redeemed (and elevations) per device"
    )
    simulate.add_argument("--nats-ca", type=Path, metavar="FILE", help=NATS_CA_HELP)
    simulate.set_defaults(run=_simulate)
    return parser


# --- sub-commands ---------------------------------------------------------------

Runner = Callable[[Agent, argparse.Namespace], Awaitable[tuple[dict[str, Any], str]]]


async def _enroll(agent: Agent, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    identity = await agent.enroll(
        args.url, args.enrollment_token, args.hostname, nats_ca=_nats_ca(args)
    )
    human = (
        f"Enrolled as device {identity.device_id} of tenant {identity.tenant}.\n"
        f"State: {agent.state.path}"
    )
    return {"device_id": identity.device_id, "tenant": identity.tenant}, human


async def _request(agent: Agent, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    outcome = await agent.request(
        args.exe,
        user=args.user,
        reason=args.reason,
        sha256=args.sha256,
        publisher=args.publisher,
        app_name=args.app_name,
        command_line=args.command_line,
        wait_seconds=args.wait,
    )
    return outcome.as_json(), _describe_outcome(outcome, args.wait)


async def _status(agent: Agent, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    status = await agent.status()
    return status.as_json(), _describe_status(status)


async def _request_code(agent: Agent, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    code = await agent.offline_request_code(
        exe=args.exe, sha256=args.sha256, admin_minutes=args.admin, user=args.user
    )
    what = f"full admin for {args.admin} minutes" if args.admin else args.exe
    human = (
        f"Request code: {code}\n"
        f"Read it to the help desk ({what}), then enter their answer with\n"
        "  epm-agent offline respond XXXX-XXXX-XXXX"
    )
    return {"request_code": code}, human


async def _respond(agent: Agent, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    granted = await agent.offline_respond(args.code, user=args.user)
    return granted.as_json(), _describe_grant(granted)


async def _redeem(agent: Agent, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    granted = await agent.offline_redeem(
        args.code, exe=args.exe, sha256=args.sha256, user=args.user
    )
    return granted.as_json(), _describe_grant(granted)


async def _generate(agent: Agent, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    out = await agent.offline_generate(
        args.purpose, exe=args.exe, sha256=args.sha256, minutes=args.minutes
    )
    shown: dict[str, Any] = {
        k: out[k] for k in ("code", "purpose", "expires_at", "key_version") if k in out
    }
    human = (
        f"Offline {args.purpose} code: {out['code']}\n"
        f"Valid once, until {out.get('expires_at')}; keep it for when this computer is offline."
    )
    return shown, human


async def _sync(agent: Agent, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    result = await agent.sync(wait_seconds=args.wait)
    human = (
        f"Offline log: {result.sent} records uploaded now, {result.confirmed} confirmed by "
        f"the server, {result.pending} not confirmed yet."
    )
    if result.pending:
        human += "\nRun 'epm-agent sync' again later to see them confirmed."
    for kind, seqs in result.refused.items():
        human += f"\nREFUSED by the server ({kind}): records {', '.join(map(str, seqs))}; " + (
            REFUSAL_MEANING.get(kind, "a security alert was raised")
        )
    return result.as_json(), human


REFUSAL_MEANING = {
    "log_tampered": "they were changed after they were written, and a security alert was raised",
    "log_fork": (
        "the server holds other records under these numbers: this state dir is a copy (or "
        "a restored backup) of one that uploaded first, and a security alert was raised"
    ),
}


async def _simulate(agent: Agent, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    bar = None if getattr(args, "json", False) else ProgressBar()
    result = await simulate(
        args.url,
        args.token,
        args.tenant,
        args.devices,
        args.events,
        progress=bar,
        nats_ca=_nats_ca(args),
    )
    human = (
        f"{result.devices} devices replayed {result.records} offline records in "
        f"{result.seconds:.2f}s: {result.sent} sent, {result.confirmed} confirmed."
    )
    return result.as_json(), human


def _nats_ca(args: argparse.Namespace) -> Path | None:
    """--nats-ca, else $EPM_AGENT_NATS_CA (empty: none)."""
    if args.nats_ca is not None:
        return Path(args.nats_ca)
    env = os.environ.get(NATS_CA_ENV)
    return Path(env).expanduser() if env else None


def _describe_grant(granted: Granted) -> str:
    if granted.grant == "admin":
        return f"Granted: full admin for {granted.minutes} minutes (until {granted.as_json()['ends_at']})."
    return f"Granted: this application may run elevated once ({granted.app.file_name if granted.app else ''})."


def _describe_outcome(outcome: RequestOutcome, waited: float) -> str:
    by = f" by {outcome.decided_by}" if outcome.decided_by else ""
    if outcome.status == "open":
        after = f" after waiting {waited:g}s" if waited else ""
        return (
            f"Request {outcome.request_id} is open{after}: a technician will decide.\n"
            "Run 'epm-agent status' to see the decision."
        )
    return f"Request {outcome.request_id} {outcome.status}{by}."


def _describe_status(status: AgentStatus) -> str:
    lines = [
        f"Device {status.device_id} of tenant {status.tenant}: "
        + ("online" if status.online else "offline (showing what this agent last knew)")
    ]
    if not status.requests:
        lines.append("No requests.")
    for r in status.requests:
        by = f" ({r.decided_by})" if r.decided_by else ""
        what = (r.app or {}).get("file_name", "")
        lines.append(f"  {r.request_id}  {r.status:<8}{by}  {what}".rstrip())
    return "\n".join(lines)


# --- entry point ------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _Parser.json_errors = "--json" in argv
    args = build_parser().parse_args(argv)
    as_json: bool = getattr(args, "json", False)
    state_dir: Path = getattr(args, "state_dir", None) or default_state_dir()
    run: Runner = args.run
    try:
        agent = Agent(state_dir, offline=getattr(args, "offline", False), clock=clock_from_env())
        obj, human = asyncio.run(_run(agent, args, run))
    except NotImplementedYet as exc:
        return _fail(str(exc), as_json, EXIT_NOT_IMPLEMENTED)
    except CodeRefused as exc:
        return _fail(str(exc), as_json, EXIT_FAILED, {"reason": exc.reason, **exc.extra})
    except AgentError as exc:
        return _fail(str(exc), as_json, EXIT_FAILED)
    except KeyboardInterrupt:
        return _fail("interrupted", as_json, 130)
    if as_json:
        _print_json(obj)
    else:
        print(human)
    return 0


async def _run(agent: Agent, args: argparse.Namespace, run: Runner) -> tuple[dict[str, Any], str]:
    try:
        return await run(agent, args)
    finally:
        await agent.close()


def _fail(message: str, as_json: bool, code: int, extra: dict[str, Any] | None = None) -> int:
    if as_json:
        _print_json({"error": message, **(extra or {})})
    else:
        print(f"error: {message}", file=sys.stderr)
    return code


def _print_json(obj: object) -> None:
    sys.stdout.write(orjson.dumps(obj).decode() + "\n")
    sys.stdout.flush()


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if seconds < 0:
        raise argparse.ArgumentTypeError("--wait cannot be negative")
    return seconds


if __name__ == "__main__":
    sys.exit(main())
