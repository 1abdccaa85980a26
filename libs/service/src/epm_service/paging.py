"""Keyset paging for a service's list commands: the page size, and an opaque cursor holding
the sort key of the last item of a page (the next page starts after it).

A cursor is base64url (no padding) of ``<list>:`` and the key as a JSON array, so a cursor of
one list is refused by another, and whatever this module did not make is refused with the
wording every EPM list uses (422, ``Invalid``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import orjson

from epm_service.errors import Invalid

DEFAULT_LIMIT = 100
MAX_LIMIT = 500

FOREIGN_CURSOR = (
    "cursor is not one this API handed out: use next_cursor from the previous page,"
    " or leave it out to start from the beginning"
)

Key = tuple[str | int, ...]
_SQLITE_INT = range(-(2**63), 2**63)

T = TypeVar("T")


def page_limit(
    args: Mapping[str, Any], *, default: int = DEFAULT_LIMIT, most: int = MAX_LIMIT
) -> int:
    """``args["limit"]``: absent or null is ``default``; else a whole number from 1 to ``most``."""
    value = args.get("limit")
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        raise Invalid(f"limit must be a whole number from 1 to {most}, not {value!r}")
    return value


def encode_cursor(kind: str, key: Sequence[str | int]) -> str:
    """The cursor that continues list ``kind`` after the item whose sort key is ``key``."""
    raw = kind.encode() + b":" + orjson.dumps(list(key))
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(kind: str, cursor: object, shape: Sequence[type[str] | type[int]]) -> Key:
    """The key a cursor of list ``kind`` holds, its values of the types ``shape`` names; any
    other cursor (another list's, garbled, edited) is Invalid."""
    if not isinstance(cursor, str):
        raise Invalid(FOREIGN_CURSOR)
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        prefix, sep, body = raw.partition(b":")
        key = orjson.loads(body) if sep and prefix == kind.encode() else None
    except (binascii.Error, ValueError):  # not base64 (non-ASCII included), not JSON
        key = None
    if not isinstance(key, list) or len(key) != len(shape):
        raise Invalid(FOREIGN_CURSOR)
    for value, wanted in zip(key, shape, strict=True):
        if not _fits(value, wanted):
            raise Invalid(FOREIGN_CURSOR)
    return tuple(key)


def _fits(value: object, wanted: type[str] | type[int]) -> bool:
    """Whether ``value`` is a ``wanted`` SQLite can take as a parameter."""
    if wanted is int:
        return isinstance(value, int) and not isinstance(value, bool) and value in _SQLITE_INT
    if not isinstance(value, str):
        return False
    try:
        value.encode()  # a lone surrogate ("\\ud800" in the JSON) cannot be bound
    except UnicodeEncodeError:
        return False
    return True


def start_after(
    kind: str, args: Mapping[str, Any], shape: Sequence[type[str] | type[int]]
) -> Key | None:
    """Where a page of list ``kind`` starts: after the key in ``args["cursor"]``, or at the
    beginning (None) when there is no cursor or an empty one."""
    cursor = args.get("cursor")
    if cursor is None or cursor == "":
        return None
    return decode_cursor(kind, cursor, shape)


def next_page(
    kind: str, rows: Sequence[T], limit: int, key_of: Callable[[T], Sequence[str | int]]
) -> dict[str, str]:
    """``{"next_cursor": ...}`` after a full page (there may be more), else ``{}``."""
    if len(rows) < limit or not rows:
        return {}
    return {"next_cursor": encode_cursor(kind, key_of(rows[-1]))}
