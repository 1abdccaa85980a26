"""Ids that end up in NATS subjects are validated before any subject is built."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from epm_events.ids import (
    EPM_NAMESPACE,
    GLOBAL_TENANT,
    InvalidId,
    derived_event_id,
    derived_event_id_at,
    new_event_id,
    offline_record_event_id,
    request_id_for,
    validate_device,
    validate_tenant,
    validate_token,
)
from hypothesis import given, settings
from hypothesis import strategies as st


@pytest.mark.parametrize("good", ["acme", "acme-corp", "a", "0day", "t1-2-3"])
def test_subject_safe_tenant_ids_are_accepted(good: str) -> None:
    assert validate_tenant(good) == good


@pytest.mark.parametrize(
    "bad",
    ["acme.corp", "acme*", "acme>", ">", "*", "acme corp", "Acme", "ACME", "", "-acme", "a" * 64],
)
def test_tenant_ids_that_could_widen_or_split_a_subject_are_refused(bad: str) -> None:
    with pytest.raises(InvalidId) as err:
        validate_tenant(bad)
    message = str(err.value)
    assert repr(bad) in message
    assert "lowercase letters, digits and '-'" in message  # it says what to use instead


def test_global_tenant_is_reserved_for_msp_wide_aggregates_only() -> None:
    assert validate_tenant(GLOBAL_TENANT) == GLOBAL_TENANT
    with pytest.raises(InvalidId):
        validate_tenant(GLOBAL_TENANT, allow_global=False)


@pytest.mark.parametrize("bad", ["pc.1", "pc*", "pc>", "pc 1", "PC1", ""])
def test_device_ids_that_are_not_subject_safe_are_refused(bad: str) -> None:
    with pytest.raises(InvalidId, match="invalid device id"):
        validate_device(bad)


@pytest.mark.parametrize("bad", ["a.b", "a*", "a>", "a b", "", "x" * 129])
def test_tokens_that_are_not_subject_safe_are_refused_with_what_they_are(bad: str) -> None:
    with pytest.raises(InvalidId, match="invalid aggregate id"):
        validate_token(bad, "aggregate id")


def test_tokens_allow_mixed_case_underscore_and_dash() -> None:
    assert validate_token("Req_01-ab", "aggregate id") == "Req_01-ab"


def test_derived_event_id_is_deterministic() -> None:
    assert derived_event_id("dev-1:42", "ElevationPerformed") == derived_event_id(
        "dev-1:42", "ElevationPerformed"
    )


def test_derived_event_id_differs_per_event_name_and_per_source() -> None:
    ids = {
        derived_event_id("dev-1:42", "ElevationPerformed"),
        derived_event_id("dev-1:42", "SecurityAlertRaised"),
        derived_event_id("dev-1:43", "ElevationPerformed"),
    }
    assert len(ids) == 3


@settings(max_examples=500)
@given(source=st.text(), name=st.text())
def test_derived_event_id_is_the_rfc_4122_uuid5(source: str, name: str) -> None:
    """The hand-rolled uuid5 (no UUID object on the hot path) is exactly uuid.uuid5: ids
    derived before it keep matching, so replays and redeliveries stay deduplicated."""
    assert derived_event_id(source, name) == str(uuid.uuid5(EPM_NAMESPACE, f"{source}\x1f{name}"))


@settings(max_examples=300)
@given(msg_id=st.text())
def test_request_ids_are_still_derived_from_the_uuid5_of_the_message_id(msg_id: str) -> None:
    """An agent's request id is what it was when uuid.uuid5 made it: a request re-sent
    across an upgrade names the same request."""
    expected = "req-" + uuid.uuid5(EPM_NAMESPACE, f"request\x1f{msg_id}").hex[:24]
    assert request_id_for(msg_id) == expected


def test_new_event_ids_are_unique() -> None:
    assert len({new_event_id() for _ in range(1000)}) == 1000


def test_an_offline_record_id_is_a_uuid8_the_same_for_the_same_record() -> None:
    first = offline_record_event_id("pc-1", 7, "ElevationPerformed")
    assert first == offline_record_event_id("pc-1", 7, "ElevationPerformed")
    parsed = uuid.UUID(first)
    assert parsed.version == 8 and parsed.variant == uuid.RFC_4122 and str(parsed) == first


def test_offline_record_ids_differ_per_device_sequence_and_type() -> None:
    ids = {
        offline_record_event_id(device, seq, name)
        for device in ("pc-1", "pc-2")
        for seq in (1, 2, 1 << 36, (1 << 36) + 1)
        for name in ("ElevationPerformed", "OfflineCodeRedeemed")
    }
    assert len(ids) == 16


def test_one_devices_records_sort_together_in_sequence_order() -> None:
    """What keeps an index keyed by event id cheap: an upload's records are neighbours."""
    ids = [offline_record_event_id("pc-1", seq, "ElevationPerformed") for seq in range(1, 5000)]
    assert ids == sorted(ids)
    other = offline_record_event_id("pc-2", 10, "ElevationPerformed")
    assert not ids[0] < other < ids[-1]


def test_new_event_ids_are_uuid7_in_the_order_they_were_made() -> None:
    first = new_event_id()
    time.sleep(0.002)
    later = [new_event_id() for _ in range(3)]
    parsed = uuid.UUID(first)
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert abs((parsed.int >> 80) - time.time_ns() // 1_000_000) < 5_000
    assert all(first < other for other in later)


AT = datetime(2026, 12, 7, 14, 0, 0, 123456, tzinfo=UTC)


def test_ids_derived_at_a_time_are_deterministic_uuid8_of_that_millisecond() -> None:
    one = derived_event_id_at("msg-1", "RequestCreated", AT)
    assert one == derived_event_id_at("msg-1", "RequestCreated", AT)
    parsed = uuid.UUID(one)
    assert parsed.version == 8 and parsed.variant == uuid.RFC_4122
    assert parsed.int >> 80 == int(AT.timestamp() * 1000)
    assert one != derived_event_id_at("msg-2", "RequestCreated", AT)
    assert one != derived_event_id_at("msg-1", "Approved", AT)
    assert one < derived_event_id_at("msg-0", "RequestCreated", AT + timedelta(milliseconds=1))
