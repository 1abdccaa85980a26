"""``epm events tail``: the domain event stream (``GET /v1/events``) as NDJSON.

Each line is one CloudEvent plus ``seq``, its stream sequence: give the last
one to ``--after`` to carry on from there. While following, a dropped
connection is resumed after the last event printed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Annotated

import httpx
import orjson
import typer

from epm_cli.output import JsonFlag, fail
from epm_cli.technician.api import default_data_dir, default_token, default_url
from epm_cli.technician.options import DataDirOption, TokenOption, UrlOption
from epm_cli.technician.problem import problem_message

RECONNECT_TRIES = 5


class StreamEnded(Exception):
    """The connection dropped while following."""


def sse_events(lines: Iterator[str]) -> Iterator[tuple[int, bytes]]:
    """(id, data) of each SSE event; comments (``: ping``) and retry hints are skipped."""
    seq: int | None = None
    data: list[str] = []
    for line in lines:
        if not line:
            if seq is not None and data:
                yield seq, "\n".join(data).encode()
            seq, data = None, []
        elif line.startswith("id:"):
            seq = int(line[3:].strip())
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))


def ndjson_line(seq: int, data: bytes) -> bytes:
    event = orjson.loads(data)
    return orjson.dumps({"seq": seq, **event}) + b"\n"


def tail(
    client: httpx.Client, tenant: str | None, after: int | None, follow: bool, as_json: bool
) -> None:
    position = after
    tries = 0
    while True:
        params: dict[str, str] = {"follow": "true" if follow else "false"}
        if tenant:
            params["tenant"] = tenant
        if position is not None:
            params["after"] = str(position)
        try:
            with client.stream("GET", "/v1/events", params=params) as response:
                if response.status_code >= 400:
                    message = problem_message(
                        response.status_code,
                        response.read(),
                        "authorization" in client.headers,
                    )
                    fail(message, as_json, status=response.status_code)
                tries = 0
                for seq, data in sse_events(response.iter_lines()):
                    sys.stdout.buffer.write(ndjson_line(seq, data))
                    sys.stdout.buffer.flush()
                    position = seq
            if not follow:
                return
        except httpx.HTTPError as exc:
            tries += 1
            if tries > RECONNECT_TRIES:
                fail(
                    f"cannot read the event stream at {client.base_url}"
                    f" ({exc.__class__.__name__}: {exc}); is 'epm dev' running? Resume with"
                    f" --after {position if position is not None else 0}",
                    as_json,
                )
            time.sleep(min(2**tries, 30) / 10)


def tail_command(
    tenant: Annotated[
        str | None,
        typer.Option(
            "--tenant",
            help="One tenant, for MSP principals and MSP-wide integrators (default: every"
            " tenant; a tenant's own tokens read their tenant).",
        ),
    ] = None,
    after: Annotated[
        int | None,
        typer.Option(
            "--after",
            min=0,
            help="Strictly after this sequence (0: from the start; default: new events only).",
        ),
    ] = None,
    follow: Annotated[
        bool,
        typer.Option("--follow/--no-follow", help="Stay live, or stop once caught up."),
    ] = True,
    url: UrlOption = None,
    token: TokenOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Print domain events as NDJSON (one CloudEvent a line, with its "seq").

    Example: epm events tail --tenant acme --after 0 --no-follow
    """
    where = data_dir or default_data_dir()
    secret = token or default_token(where)
    headers = {"Accept": "text/event-stream"}
    if secret:
        headers["Authorization"] = f"Bearer {secret}"
    if after is None and not follow:
        after = 0  # "what is there now" means from the start
    timeout = httpx.Timeout(30.0, read=None)
    try:
        with httpx.Client(
            base_url=url or default_url(where), headers=headers, timeout=timeout
        ) as client:
            tail(client, tenant, after, follow, as_json)
    except KeyboardInterrupt:
        return
