"""How every ``epm`` command answers: one JSON object with ``--json``, short text otherwise."""

from __future__ import annotations

import sys
from typing import Annotated, Any, NoReturn

import orjson
import typer
from typer._click import Context  # Typer runs on its own copy of Click, not the click package
from typer._click.exceptions import ClickException, UsageError
from typer.core import TyperGroup

JsonFlag = Annotated[
    bool, typer.Option("--json", help='Print exactly one JSON object (errors: {"error": ...}).')
]


def emit(obj: object, as_json: bool, human: str | None = None) -> None:
    if as_json or human is None:
        option = 0 if as_json else orjson.OPT_INDENT_2
        sys.stdout.write(orjson.dumps(obj, option=option).decode() + "\n")
    else:
        typer.echo(human)


def fail(message: str, as_json: bool, code: int = 1, **extra: object) -> NoReturn:
    if as_json:
        sys.stdout.write(orjson.dumps({"error": message, **extra}).decode() + "\n")
    else:
        typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


class JsonUsageErrors(TyperGroup):
    """The root ``epm`` group: with ``--json`` anywhere in the arguments, a usage error (a
    missing option, a bad value, an unknown command) is one ``{"error": ...}`` object on
    stdout and exit 2, like any other failure; without it, Typer's usual message."""

    JSON_META = "epm.json_errors"

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: Context | None = None,
        **extra: Any,
    ) -> Context:
        as_json = "--json" in args
        try:
            ctx = super().make_context(info_name, args, parent, **extra)
        except ClickException as exc:
            if as_json:
                _usage_failure(exc)
            raise
        ctx.meta[self.JSON_META] = as_json
        return ctx

    def invoke(self, ctx: Context) -> Any:
        try:
            return super().invoke(ctx)
        except ClickException as exc:
            if ctx.meta.get(self.JSON_META):
                _usage_failure(exc)
            raise


def _usage_failure(exc: ClickException) -> NoReturn:
    message = exc.format_message()
    where = exc.ctx if isinstance(exc, UsageError) else None
    if where is not None:
        command = command_line(where)
        message = f"{command}: {message.rstrip('.')}; see '{command} --help'"
    fail(message, True, exc.exit_code)


def command_line(ctx: Context) -> str:
    """``epm`` and the sub-commands of ``ctx``, e.g. ``epm request list``: the root is named
    ``epm`` whatever it was started as (``python -m epm_cli.main``, a test runner)."""
    names: list[str] = []
    at: Context | None = ctx
    while at is not None and at.parent is not None:
        names.insert(0, at.info_name or "")
        at = at.parent
    return " ".join(["epm", *names])
