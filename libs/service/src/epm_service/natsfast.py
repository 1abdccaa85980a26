"""A faster header parser for nats-py, the same behaviour (installed by ``epm_service.bus``).

nats-py 2.16 parses every received message's headers in Python and checks each header
name for whitespace with ``any(c.isspace() for c in key)``: a generator step per
character, about 45 for ``Nats-Expected-Last-Subject-Sequence-Subject``. On every
JetStream delivery, acknowledgement and reply that is a fifth of a service's CPU time
(cProfile of request-svc and approval-svc at 500 online requests/s, bench/README.md).
``_parse_header_lines`` here gives the same dict for every input
(``tests/unit/test_natsfast.py`` compares the two on generated header blocks); only
the whitespace test is one regular-expression search instead of the generator.
"""

from __future__ import annotations

import re

from nats.aio.client import Client

_CRLF = b"\r\n"
_WHITESPACE = re.compile(r"\s")
"""``str.isspace`` and ``\\s`` agree on every character a header name can hold (ASCII)."""

ORIGINAL_PARSE_HEADER_LINES = Client._parse_header_lines


def parse_header_lines(raw: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    search = _WHITESPACE.search
    for line in raw.split(_CRLF):
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        try:
            key = name.strip().decode("ascii")
        except UnicodeDecodeError:
            continue
        if search(key) is not None:
            continue
        out[key] = value.strip().decode("utf-8", "replace")
    return out


def install() -> None:
    """Replace nats-py's parser, once per process; idempotent."""
    Client._parse_header_lines = staticmethod(parse_header_lines)  # type: ignore[method-assign]
