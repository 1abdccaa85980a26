"""How every ``epm`` command answers: one JSON object with ``--json``, short text otherwise."""

from __future__ import annotations

import sys
from typing import Annotated, NoReturn

import orjson
import typer

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
