"""Bytes <-> envelope and event, in one place (orjson + pydantic).

Every refusal is a ``DecodeError`` with a machine-readable ``reason`` and a
sentence a person can act on; callers dead-letter with both.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import ValidationError

from epm_events.catalog import EVENT_TYPES, Event
from epm_events.envelope import Envelope
from epm_events.upcasters import UPCASTERS, upcast

MAX_EVENT_BYTES = 256 * 1024
"""Largest event accepted; far below NATS' 1 MB payload limit."""


class DecodeError(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def encode(env: Envelope) -> bytes:
    return orjson.dumps(env.model_dump(mode="json"))


def decode(payload: bytes) -> Envelope:
    """Parse and validate the envelope only (not the data)."""
    if len(payload) > MAX_EVENT_BYTES:
        raise DecodeError(
            "oversized", f"event is {len(payload)} bytes; the limit is {MAX_EVENT_BYTES}"
        )
    try:
        raw: Any = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise DecodeError("malformed", f"not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise DecodeError("malformed", "expected a CloudEvents JSON object")
    if raw.get("specversion") != "1.0":
        raise DecodeError("malformed", "expected CloudEvents specversion '1.0'")
    try:
        return Envelope.model_validate(raw)
    except ValidationError as exc:
        raise DecodeError("invalid_envelope", _summary(exc)) from None


def decode_event(payload: bytes) -> tuple[Envelope, Event]:
    env = decode(payload)
    return env, event_of(env)


def event_of(env: Envelope) -> Event:
    name, version = env.event_name, env.version
    cls = EVENT_TYPES.get(name)
    if cls is None:
        raise DecodeError("unknown_type", f"unknown event type {env.type!r}")
    if version > cls.VERSION:
        raise DecodeError(
            "unsupported_version",
            f"{env.type} is newer than this service understands (v{cls.VERSION}); upgrade it",
        )
    data = env.data
    if version < cls.VERSION:
        # A missing link is checked up front: a KeyError raised *inside* an upcaster means
        # the old event lacks a field (invalid data), not that the upcaster is missing.
        if any((name, v) not in UPCASTERS for v in range(version, cls.VERSION)):
            raise DecodeError(
                "unsupported_version", f"no upcaster from {env.type} to v{cls.VERSION}"
            )
        try:
            data = upcast(name, version, cls.VERSION, data)
        except Exception as exc:  # an old event that does not fit its own old schema
            raise DecodeError("invalid_data", f"cannot upcast {env.type}: {exc}") from None
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise DecodeError("invalid_data", f"{env.type}: {_summary(exc)}") from None


def _summary(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)
