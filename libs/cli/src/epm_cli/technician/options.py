"""The options every technician command takes: --url, --token, --data-dir, --json."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from epm_cli.output import fail
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
