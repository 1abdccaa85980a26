"""The options every technician command takes: --url, --token, --data-dir, --json; and the
paging of list commands: --limit, --cursor and the ``more:`` line that continues a listing."""

from __future__ import annotations

import shlex
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import typer
from typer._click.core import ParameterSource  # Typer runs on its own copy of Click
from typer.core import DEFAULT_MARKUP_MODE, TyperArgument, TyperOption

from epm_cli.output import command_line, fail
from epm_cli.technician.api import Api, ApiError, default_data_dir, default_token, default_url

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="EPM_URL",
        help="Gateway URL (default: the running epm dev's, else http://127.0.0.1:8080).",
        show_default=False,
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="EPM_TOKEN",
        help="Bearer token (default: <data-dir>/admin-token if present).",
        show_default=False,
    ),
]
DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        envvar="EPM_DATA_DIR",
        help="The epm dev data dir the defaults come from (default ./.epm).",
        show_default=False,
    ),
]


def literal_help(text: str) -> str:
    """``text`` as --help should show it: with Rich, Typer reads ``[...]`` as markup (and
    drops it), so brackets are escaped; without Rich, help is plain text."""
    return text.replace("[", r"\[") if DEFAULT_MARKUP_MODE == "rich" else text


@contextmanager
def api_session(
    url: str | None, token: str | None, data_dir: Path | None, as_json: bool
) -> Iterator[Api]:
    """An Api for the command; an ApiError inside ends the command with that message."""
    where = data_dir or default_data_dir()
    api = Api(url or default_url(where), token or default_token(where))
    try:
        with api:
            yield api
    except ApiError as exc:
        extra: dict[str, Any] = {"status": exc.status} if exc.status is not None else {}
        fail(str(exc), as_json, **extra)


def render_table(rows: list[dict[str, Any]], columns: list[str], empty: str) -> str:
    if not rows:
        return empty
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]

    def line(values: list[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    return "\n".join([line([c.upper() for c in columns]), *(line(row) for row in cells)])


# --- paging ---------------------------------------------------------------------------

CursorOption = Annotated[
    str | None,
    typer.Option(
        "--cursor",
        help="Continue a listing: the next_cursor of its last page (the 'more:' line has it).",
        show_default=False,
    ),
]


def limit_option(most: int) -> Any:
    """``--limit`` for a list endpoint that answers at most ``most`` items a page."""
    return typer.Option(
        "--limit",
        min=1,
        max=most,
        help=f"Items per page, 1-{most} (default: the server's, 100).",
        show_default=False,
    )


def page_path(
    path: str,
    cursor: str | None,
    limit: int | None,
    filters: Mapping[str, str | None] | None = None,
) -> str:
    """``path`` with the query of one page: the filters and paging given (None: left out, so
    the server's default applies)."""
    given = {**(filters or {}), "cursor": cursor, "limit": None if limit is None else str(limit)}
    query = urlencode({k: v for k, v in given.items() if v is not None})
    return f"{path}?{query}" if query else path


# Given on the command line, a token is not repeated: the hint names the option instead.
SECRET_PLACEHOLDERS = {"token": "TOKEN"}
NOT_REPEATED = {"cursor", "as_json"}


def with_more(ctx: typer.Context, answer: object, text: str) -> str:
    """``text``, then, when the answer has a next page, a ``more:`` line with the command that
    shows it: this one (``ctx``), with the arguments and options given on the command line,
    and the answer's next_cursor."""
    cursor = answer.get("next_cursor") if isinstance(answer, dict) else None
    if not cursor:
        return text
    return f"{text}\nmore: {continuation(ctx, str(cursor))}"


def continuation(ctx: typer.Context, cursor: str) -> str:
    """The command line of ``ctx`` as typed (``epm`` as its program), at page ``cursor``."""
    arguments: list[str] = []
    options: list[str] = []
    for param in ctx.command.params:
        name = param.name
        if name is None or name in NOT_REPEATED:
            continue
        if ctx.get_parameter_source(name) is not ParameterSource.COMMANDLINE:
            continue  # defaults and environment variables apply again by themselves
        value = ctx.params.get(name)
        if isinstance(param, TyperArgument):
            values = value if isinstance(value, tuple | list) else (value,)
            arguments.extend(_shell_word(v) for v in values)
        elif isinstance(param, TyperOption):
            options.extend(_option_words(param, value))
    return " ".join([command_line(ctx), *arguments, *options, "--cursor", shlex.quote(cursor)])


def _option_words(option: TyperOption, value: Any) -> list[str]:
    name = option.name or ""
    flag = _long_name(option.opts)
    if name in SECRET_PLACEHOLDERS:
        return [flag, SECRET_PLACEHOLDERS[name]]
    if option.is_flag:
        if not value and option.secondary_opts:
            return [_long_name(option.secondary_opts)]
        return [flag] if value else []
    values = value if option.multiple else (value,)
    words: list[str] = []
    for v in values:
        words += [flag, _shell_word(v)]
    return words


def _long_name(opts: list[str]) -> str:
    return next((o for o in opts if o.startswith("--")), opts[0])


def _shell_word(value: Any) -> str:
    return shlex.quote(str(value.value if isinstance(value, Enum) else value))
