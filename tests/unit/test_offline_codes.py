from __future__ import annotations

from datetime import date, timedelta

import pytest
from epm_domain.offline_codes import (
    ADMIN_MINUTES,
    AccessCode,
    CodeError,
    ResponseGrant,
    access_code_hash,
    code_hash,
    device_key,
    from_text,
    issue_access_code,
    new_request_code,
    read_access_code,
    response_code,
    to_text,
    verify_access_code,
    verify_response,
)
from hypothesis import given
from hypothesis import strategies as st

MASTER = b"m" * 32
TODAY = date(2026, 11, 23)
KEY = device_key(MASTER, "acme", "d-1", 1, "response")
AKEY = device_key(MASTER, "acme", "d-1", 1, "access-code")
SHA = "ab" * 32

devices = st.sampled_from(["d-1", "d-2", "d-ff"])
req_codes = st.from_regex(r"[0-9]{6}", fullmatch=True)
grants = st.one_of(
    st.builds(ResponseGrant, grant=st.just("app"), sha256=st.sampled_from([SHA, "cd" * 32, None])),
    st.builds(ResponseGrant, grant=st.just("admin"), minutes=st.sampled_from([15, 30, 60])),
)
versions = st.integers(1, 4)


@given(st.integers(0, 2**60 - 1))
def test_text_form_round_trips(value: int) -> None:
    text = to_text(value)
    assert len(text) == 14 and text[4] == text[9] == "-"
    assert from_text(text) == value
    assert from_text(text.lower().replace("-", "")) == value
    assert from_text(text.replace("0", "O").replace("1", "I")) == value


@given(devices, req_codes, grants, versions, devices, req_codes, grants, versions)
def test_response_code_verifies_only_for_what_it_was_made_for(
    d1: str, r1: str, g1: ResponseGrant, v1: int, d2: str, r2: str, g2: ResponseGrant, v2: int
) -> None:
    code = response_code(KEY, d1, r1, g1, v1)
    assert verify_response(KEY, d1, r1, g1, v1, code)
    assert verify_response(KEY, d1, r1, g1, v1, code.lower().replace("-", ""))
    if (d1, r1, g1.fields(), v1) != (d2, r2, g2.fields(), v2):
        assert not verify_response(KEY, d2, r2, g2, v2, code)


def test_response_code_of_another_device_key_fails() -> None:
    other = device_key(MASTER, "acme", "d-2", 1, "response")
    g = ResponseGrant("admin", minutes=30)
    assert not verify_response(
        other, "d-1", "123456", g, 1, response_code(KEY, "d-1", "123456", g, 1)
    )


access_codes = st.one_of(
    st.builds(
        AccessCode,
        counter=st.integers(0, 2047),
        purpose=st.just("admin"),
        expires_on=st.integers(0, 31).map(lambda n: TODAY + timedelta(days=n)),
        minutes=st.sampled_from(ADMIN_MINUTES),
    ),
    st.builds(
        AccessCode,
        counter=st.integers(0, 2047),
        purpose=st.just("app"),
        expires_on=st.integers(0, 31).map(lambda n: TODAY + timedelta(days=n)),
        pinned_sha256=st.sampled_from([None, SHA]),
    ),
)


@given(access_codes, st.integers(0, 31))
def test_access_code_parameters_round_trip(code: AccessCode, days_later: int) -> None:
    text = issue_access_code(AKEY, "d-1", code, 1, TODAY)
    claimed = read_access_code(text)
    assert claimed.counter == code.counter and claimed.purpose == code.purpose
    today = TODAY + timedelta(days=days_later)
    if today <= code.expires_on:
        got = verify_access_code(AKEY, "d-1", text, 1, today, sha256=SHA)
        assert got == code
    else:
        with pytest.raises(CodeError):
            verify_access_code(AKEY, "d-1", text, 1, today, sha256=SHA)


def test_access_code_is_refused_on_another_device_and_after_rotation() -> None:
    code = AccessCode(7, "admin", TODAY + timedelta(days=3), minutes=60)
    text = issue_access_code(AKEY, "d-1", code, 1, TODAY)
    with pytest.raises(CodeError):
        verify_access_code(
            device_key(MASTER, "acme", "d-2", 1, "access-code"), "d-2", text, 1, TODAY
        )
    with pytest.raises(CodeError):
        verify_access_code(
            device_key(MASTER, "acme", "d-1", 2, "access-code"), "d-1", text, 2, TODAY
        )


def test_pinned_code_works_only_for_its_application() -> None:
    code = AccessCode(1, "app", TODAY, pinned_sha256=SHA)
    text = issue_access_code(AKEY, "d-1", code, 1, TODAY)
    assert verify_access_code(AKEY, "d-1", text, 1, TODAY, sha256=SHA).pinned_sha256 == SHA
    with pytest.raises(CodeError):
        verify_access_code(AKEY, "d-1", text, 1, TODAY, sha256="cd" * 32)


def test_code_hash_ignores_how_the_code_was_typed() -> None:
    text = to_text(12345678901)
    assert code_hash(text) == code_hash(text.lower().replace("-", ""))


def test_request_codes_are_six_digits_and_not_reused() -> None:
    used = {f"{i:06d}" for i in range(0, 1_000_000, 2)}
    for _ in range(50):
        c = new_request_code(used)
        assert len(c) == 6 and c.isdigit() and c not in used


def test_an_access_codes_hash_is_keyed_by_the_device_and_ignores_how_it_was_typed() -> None:
    text = issue_access_code(AKEY, "d-1", AccessCode(7, "app", TODAY, 0, SHA), 1, TODAY)
    keyed = access_code_hash(text, AKEY)
    assert keyed == access_code_hash(text.lower().replace("-", ""), AKEY)
    assert keyed.startswith("hmac:") and keyed != "hmac:" + code_hash(text)
    assert keyed != access_code_hash(text, bytes(32))  # another device's key: another hash
