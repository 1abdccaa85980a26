"""The event codec under arbitrary input: whatever the bytes, decode_event either returns an
event or raises DecodeError (with a reason and a detail), never anything else.

No server needed: the codec is what every consumer runs first on untrusted bytes."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from epm_events.catalog import EVENT_TYPES
from epm_events.codec import MAX_EVENT_BYTES, DecodeError, decode_event
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REASONS = {
    "oversized",
    "malformed",
    "invalid_envelope",
    "unknown_type",
    "unsupported_version",
    "invalid_data",
}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)


def decodes_or_refuses(payload: bytes) -> None:
    try:
        decode_event(payload)
    except DecodeError as exc:
        assert exc.reason in REASONS, exc.reason
        assert exc.detail
        assert len(str(exc)) < 5000  # a sentence, not the payload echoed back


@FUZZ
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_are_an_event_or_a_decode_error(payload: bytes) -> None:
    decodes_or_refuses(payload)


@FUZZ
@given(json_values)
def test_arbitrary_json_is_an_event_or_a_decode_error(value: Any) -> None:
    decodes_or_refuses(orjson.dumps(value))


event_types = st.sampled_from(sorted(EVENT_TYPES))


@st.composite
def envelopes(draw: st.DrawFn) -> dict[str, Any]:
    """Nearly valid CloudEvents: right shape, any event type and version, fuzzed fields."""
    name = draw(event_types)
    version = draw(st.integers(min_value=0, max_value=EVENT_TYPES[name].VERSION + 1))
    env: dict[str, Any] = {
        "specversion": "1.0",
        "id": str(uuid.UUID(int=draw(st.integers(min_value=0, max_value=2**128 - 1)))),
        "source": draw(st.sampled_from(["/epm/gateway", "/agents/acme/d-1", "", "x"])),
        "type": draw(
            st.sampled_from(
                [f"epm.{name}.v{version}", f"epm.{name}", name, f"epm.{name}.vX", "epm..v1"]
            )
        ),
        "subject": draw(st.text(max_size=20)),
        "time": draw(st.sampled_from(["2026-11-23T12:00:00Z", "yesterday", "", 12])),
        "tenant": draw(st.sampled_from(["acme", "_global", "ACME", "a.b", "", "*"])),
        "data": draw(st.dictionaries(st.text(max_size=12), json_values, max_size=8) | json_values),
    }
    for key in draw(st.sets(st.sampled_from(sorted(env)), max_size=3)):
        if draw(st.booleans()):
            del env[key]
        else:
            env[key] = draw(json_values)
    return env


@FUZZ
@given(envelopes())
def test_fuzzed_cloudevents_are_an_event_or_a_decode_error(env: dict[str, Any]) -> None:
    decodes_or_refuses(orjson.dumps(env))


@FUZZ
@given(envelopes(), st.data())
def test_truncated_cloudevents_are_refused_as_malformed(env: dict[str, Any], data: Any) -> None:
    payload = orjson.dumps(env)
    cut = data.draw(st.integers(min_value=0, max_value=len(payload) - 1))
    try:
        decode_event(payload[:cut])
    except DecodeError as exc:
        assert exc.reason == "malformed"
    else:
        raise AssertionError("a truncated JSON object decoded")


def test_a_payload_above_the_limit_is_refused_before_parsing() -> None:
    payload = b"[" * (MAX_EVENT_BYTES + 1)
    try:
        decode_event(payload)
    except DecodeError as exc:
        assert exc.reason == "oversized"
    else:
        raise AssertionError("oversized payload decoded")


def test_deeply_nested_json_is_a_decode_error() -> None:
    decodes_or_refuses(b"[" * 5000 + b"]" * 5000)
    decodes_or_refuses(b'{"specversion":"1.0","data":' + b"[" * 2000 + b"]" * 2000 + b"}")
