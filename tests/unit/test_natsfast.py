"""The faster nats-py header parser answers exactly as nats-py's own."""

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
