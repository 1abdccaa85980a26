"""The faster nats-py header and protocol parsers answer exactly as nats-py's own."""

from __future__ import annotations

import pytest
from epm_service import bus  # noqa: F401  (installs the parser)
from epm_service.natsfast import ORIGINAL_PARSE_HEADER_LINES, msg_id_of, parse_header_lines
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client

pytestmark = pytest.mark.unit

NAMES = st.sampled_from(
    ["Nats-Msg-Id", "Nats-Expected-Last-Subject-Sequence-Subject", "Epm-Signature", "X", ""]
)
TEXT = st.binary(max_size=40) | st.text(max_size=40).map(str.encode)
LINES = st.lists(
    st.one_of(
        st.tuples(NAMES.map(str.encode), st.sampled_from([b": ", b":", b":\t", b""]), TEXT).map(
            b"".join
        ),
        TEXT,
    ),
    max_size=8,
)


def test_every_ascii_character_is_whitespace_to_both_or_to_neither() -> None:
    for code in range(128):
        key = f"A{chr(code)}B"
        raw = key.encode() + b": v"
        assert parse_header_lines(raw) == ORIGINAL_PARSE_HEADER_LINES(raw), repr(chr(code))


@given(LINES)
def test_generated_header_blocks_parse_the_same(lines: list[bytes]) -> None:
    raw = b"\r\n".join(lines) + b"\r\n\r\n"
    assert parse_header_lines(raw) == ORIGINAL_PARSE_HEADER_LINES(raw)


def test_nats_py_uses_it_once_epm_service_bus_is_imported() -> None:
    assert Client._parse_header_lines is parse_header_lines
    raw = b"Nats-Msg-Id: abc\r\nBad Name: x\r\nNats-Expected-Stream:EPM_EVENTS\r\n\r\n"
    assert Client._parse_header_lines(raw) == {
        "Nats-Msg-Id": "abc",
        "Nats-Expected-Stream": "EPM_EVENTS",
    }


@given(LINES)
def test_the_message_id_read_from_raw_headers_is_the_one_the_parser_gives(
    lines: list[bytes],
) -> None:
    raw = b"NATS/1.0\r\n" + b"\r\n".join(lines) + b"\r\n\r\n"
    parsed = parse_header_lines(raw[len(b"NATS/1.0\r\n") :])
    found = msg_id_of(raw)
    ids = [line for line in lines if line.startswith(b"Nats-Msg-Id:")]
    if len(ids) <= 1:  # one id (as every EPM message has), or none
        assert found == parsed.get("Nats-Msg-Id")


# --- the protocol parser: the same calls as nats-py's for any cut of the stream ---------


class Recorder:
    """The parser's client: records what each parser asks of it."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        self.calls.append(("msg", sid, bytes(subject), bytes(reply), data, headers))

    async def _process_ping(self) -> None:
        self.calls.append(("ping",))

    async def _process_pong(self) -> None:
        self.calls.append(("pong",))

    async def _process_info(self, info: dict[str, object]) -> None:
        self.calls.append(("info", info))

    async def _process_err(self, err: str) -> None:
        self.calls.append(("err", err))


TOKEN = st.from_regex(rb"[A-Za-z0-9_$.>*-]{1,30}", fullmatch=True)
PAYLOAD = st.binary(max_size=300)
HEADER = st.sampled_from(
    [b"NATS/1.0\r\nNats-Msg-Id: abc\r\n\r\n", b"NATS/1.0 100 Idle Heartbeat\r\n\r\n"]
)


@st.composite
def command(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["msg", "hmsg", "ping", "pong", "ok", "info", "err"]))
    if kind in ("msg", "hmsg"):
        subject, sid = draw(TOKEN), draw(st.integers(1, 10**6))
        reply = draw(st.none() | TOKEN)
        gap = draw(st.sampled_from([b" ", b"  ", b"\t"]))
        payload = draw(PAYLOAD)
        parts = [b"HMSG" if kind == "hmsg" else b"MSG", subject, str(sid).encode()]
        parts += [reply] if reply else []
        if kind == "hmsg":
            header = draw(HEADER)
            parts += [str(len(header)).encode(), str(len(header) + len(payload)).encode()]
            return gap.join(parts) + b"\r\n" + header + payload + b"\r\n"
        return gap.join([*parts, str(len(payload)).encode()]) + b"\r\n" + payload + b"\r\n"
    return {
        "ping": b"PING\r\n",
        "pong": b"PONG\r\n",
        "ok": b"+OK\r\n",
        "info": b'INFO {"server_id":"x","max_payload":1048576}\r\n',
        "err": b"-ERR 'Permissions Violation for Subscription to foo'\r\n",
    }[kind]


async def calls_of(parse: object, stream: bytes, cuts: list[int]) -> list[tuple[object, ...]]:
    from nats.protocol.parser import Parser

    recorder = Recorder()
    parser = Parser(recorder)
    at = 0
    for cut in [*sorted(cuts), len(stream)]:
        await parse(parser, stream[at:cut])  # type: ignore[operator]
        at = max(at, cut)
    return recorder.calls


@given(
    commands=st.lists(command(), min_size=1, max_size=12),
    cuts=st.lists(st.integers(0, 4000), max_size=6),
)
async def test_generated_streams_parse_the_same_however_they_are_cut(
    commands: list[bytes], cuts: list[int]
) -> None:
    from epm_service.natsfast import ORIGINAL_PARSE, parse

    stream = b"".join(commands)
    cuts = [c for c in cuts if c <= len(stream)]
    expected = await calls_of(ORIGINAL_PARSE, stream, cuts)
    assert await calls_of(parse, stream, cuts) == expected
    assert len([c for c in expected if c[0] == "msg"]) == sum(
        c.startswith((b"MSG", b"HMSG")) for c in commands
    )


async def test_a_malformed_msg_line_is_a_protocol_error() -> None:
    from epm_service.natsfast import parse
    from nats.errors import ProtocolError
    from nats.protocol.parser import Parser

    with pytest.raises(ProtocolError):
        await parse(Parser(Recorder()), b"MSG subject notanumber 5\r\nhello\r\n")


def test_nats_py_parses_with_the_faster_parser() -> None:
    from epm_service.natsfast import parse
    from nats.protocol.parser import Parser

    assert Parser.parse is parse


def test_pristine_gives_nats_py_as_it_ships_and_puts_the_faster_parsers_back() -> None:
    from epm_service.natsfast import (
        ORIGINAL_PARSE,
        ORIGINAL_PROCESS_MSG,
        parse,
        pristine,
    )
    from nats.protocol.parser import Parser

    raw = b"NATS/1.0\r\nA: b\r\n\r\n"
    with pristine():
        assert Parser.parse is ORIGINAL_PARSE
        assert Client._process_msg is ORIGINAL_PROCESS_MSG
        assert Client._parse_header_lines is ORIGINAL_PARSE_HEADER_LINES
        assert Client._parse_header_lines(raw) == {"A": "b"}  # still a static method
    assert Parser.parse is parse
    assert Client._parse_header_lines is parse_header_lines
    assert Client._parse_header_lines(raw) == {"A": "b"}
