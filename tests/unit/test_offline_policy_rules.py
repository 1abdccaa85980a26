"""approval-svc's offline rules (pure): what the policy allows, and counter allocation."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from epm_approval.offline import (
    BadGrant,
    CountersExhausted,
    DeviceKeyState,
    PolicyRefused,
    check_code,
    check_count,
    check_request_code,
    check_response,
    evolve_key,
)
from epm_domain.offline_codes import MAX_COUNTER
from epm_events.catalog import DeviceKeyRotated, OfflineCodeIssued, OfflinePolicy

SHA = "ab" * 32
NOW = datetime(2030, 1, 10, 23, 0, tzinfo=UTC)
DEFAULT = OfflinePolicy()


def issued(counter: int, version: int = 1) -> OfflineCodeIssued:
    return OfflineCodeIssued(
        device_id="d-1",
        code_id=f"code-{counter}",
        purpose="app",
        counter=counter,
        code_hash="0" * 64,
        expires_at=NOW,
        issued_by="t",
        key_version=version,
    )


def test_a_response_within_policy_names_its_grant() -> None:
    assert check_response(DEFAULT, "app", SHA.upper()).sha256 == SHA
    assert check_response(DEFAULT, "admin", minutes=60).minutes == 60


@pytest.mark.parametrize(
    ("policy", "grant", "sha256", "minutes", "provision"),
    [
        (OfflinePolicy(challenge_response=False), "app", SHA, None, "challenge_response"),
        (DEFAULT, "admin", None, 61, "max_admin_minutes"),
        (DEFAULT, "app", None, None, "response_any_app"),
    ],
)
def test_responses_outside_the_policy_name_the_switch(
    policy: OfflinePolicy, grant: str, sha256: str | None, minutes: int | None, provision: str
) -> None:
    with pytest.raises(PolicyRefused) as exc:
        check_response(policy, grant, sha256, minutes)
    assert exc.value.provision == provision


def test_any_application_is_granted_only_where_the_policy_allows_it() -> None:
    assert check_response(OfflinePolicy(response_any_app=True), "app").sha256 is None


@pytest.mark.parametrize("code", ["12345", "1234567", "12a456", None])
def test_a_request_code_is_six_digits(code: str | None) -> None:
    with pytest.raises(BadGrant):
        check_request_code(code)
    assert check_request_code("123 456") == "123456"


def test_codes_follow_each_provision() -> None:
    with pytest.raises(PolicyRefused, match="admin_codes"):
        check_code(DEFAULT, "admin", now=NOW, minutes=30)
    with pytest.raises(PolicyRefused, match="app_codes"):
        check_code(OfflinePolicy(app_codes=False), "app", now=NOW)
    with pytest.raises(PolicyRefused, match="self_service"):
        check_code(DEFAULT, "app", now=NOW, self_generated=True)
    admin = OfflinePolicy(admin_codes=True, max_admin_minutes=60)
    with pytest.raises(BadGrant, match="15, 30"):
        check_code(admin, "admin", now=NOW, minutes=45)
    with pytest.raises(PolicyRefused, match="max_admin_minutes"):
        check_code(admin, "admin", now=NOW, minutes=120)
    assert check_code(admin, "admin", now=NOW, minutes=60).minutes == 60


def test_a_code_is_valid_through_the_end_of_its_expiry_day() -> None:
    grant = check_code(DEFAULT, "app", now=NOW, expires_in=3600)
    assert grant.expires_on == date(2030, 1, 11)
    assert grant.expires_at == datetime(2030, 1, 12, tzinfo=UTC)
    assert check_code(DEFAULT, "app", now=NOW).expires_on == date(2030, 1, 17)
    with pytest.raises(BadGrant):
        check_code(DEFAULT, "app", now=NOW, expires_in=32 * 86400)


def test_count_is_one_to_fifty() -> None:
    assert check_count(None) == 1
    for bad in (0, 51, "3", True):
        with pytest.raises(BadGrant):
            check_count(bad)


def test_counters_continue_per_key_version_and_restart_after_rotation() -> None:
    state = DeviceKeyState()
    for counter, seq in ((0, 5), (1, 9)):
        state = evolve_key(state, issued(counter), seq)
    assert state == DeviceKeyState(1, 2, 9)
    assert list(state.counters(3)) == [2, 3, 4]
    state = evolve_key(state, DeviceKeyRotated(device_id="d-1", key_version=2), 12)
    assert state == DeviceKeyState(2, 0, 12)
    state = evolve_key(state, issued(7, version=1), 13)  # an old version's code: seq only
    assert state == DeviceKeyState(2, 0, 13)


def test_a_key_version_runs_out_of_counters_and_says_to_rotate() -> None:
    with pytest.raises(CountersExhausted, match="rotate"):
        DeviceKeyState(next_counter=MAX_COUNTER).counters(2)
