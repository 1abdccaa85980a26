"""epm_service.paging: a list's cursor gives back the key it was made from; anything else
(another list's cursor, garbage, an edited key, values SQLite cannot take) is a 422 with the
wording every EPM list uses, never a 500."""

from __future__ import annotations

import base64

import pytest
from epm_service.errors import Invalid
from epm_service.paging import FOREIGN_CURSOR, decode_cursor, encode_cursor, page_limit

SHAPE = (int, int, str, str)


def forged(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode("utf-8", "surrogatepass")).decode().rstrip("=")


def test_a_cursor_gives_back_the_key_it_was_made_from() -> None:
    key = (0, 1, 'pc-ü 7/"x"', "d-0123")
    cursor = encode_cursor("devices", key)
    assert "=" not in cursor and "+" not in cursor and "/" not in cursor
    assert decode_cursor("devices", cursor, SHAPE) == key


@pytest.mark.parametrize(
    "cursor",
    [
        "300",  # a request list's cursor
        encode_cursor("channels", ("2025-01-01T00:00:00+00:00", "ch-1")),  # another list's
        forged('devices:[0,1,"pc"]'),  # too short
        forged('devices:[0,"1","pc","d-1"]'),  # a value of the wrong type
        forged('devices:[true,0,"pc","d-1"]'),
        forged('devices:[0,18446744073709551616,"pc","d-1"]'),  # beyond SQLite's integers
        forged('devices:[0,0,"\\ud800","d-1"]'),  # a lone surrogate
        forged('devices:{"a":1}'),
        forged("devices:not json"),
        "not base64!",
        "ZGV2aWNlcz",  # truncated
        "é",  # not ASCII
        "",
    ],
)
def test_a_cursor_this_list_did_not_hand_out_is_invalid(cursor: str) -> None:
    with pytest.raises(Invalid) as err:
        decode_cursor("devices", cursor, SHAPE)
    assert err.value.status == 422
    assert err.value.detail == FOREIGN_CURSOR


def test_the_page_size_is_100_unless_asked_and_at_most_500() -> None:
    assert page_limit({}) == 100
    assert page_limit({"limit": None}) == 100
    assert page_limit({"limit": 500}) == 500
    for bad in (0, 501, "50", True, 2.5):
        with pytest.raises(Invalid) as err:
            page_limit({"limit": bad})
        assert "from 1 to 500" in err.value.detail
