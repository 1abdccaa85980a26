"""Command arguments: checked at the edge, refused with a 422 a person can act on."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from epm_service.errors import Invalid
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def text(
    args: Mapping[str, Any], key: str, *, max_len: int = 200, default: str | None = None
) -> str:
    value = args.get(key, default)
    if value is None:
        raise Invalid(f"'{key}' is required")
    if not isinstance(value, str):
        raise Invalid(f"'{key}' must be a string")
    if len(value) > max_len:
        raise Invalid(f"'{key}' is {len(value)} characters long; the limit is {max_len}")
    return value


def choice(args: Mapping[str, Any], key: str, options: tuple[str, ...]) -> str:
    value = args.get(key)
    if value not in options:
        raise Invalid(f"'{key}' must be one of {', '.join(options)} (got {value!r})")
    return str(value)


def integer(args: Mapping[str, Any], key: str, *, default: int | None = None, low: int = 0) -> int:
    value = args.get(key, default)
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise Invalid(f"'{key}' must be an integer (got {value!r})") from None
    if number < low:
        raise Invalid(f"'{key}' must be at least {low} (got {number})")
    return number


def model(cls: type[M], value: Any, what: str) -> M:
    try:
        return cls.model_validate(value)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or what}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise Invalid(f"invalid {what}: {problems}") from None
