"""epm_service.secretbox: AES-256-GCM under EPM_MASTER_KEY, with key ids for rotation."""

from __future__ import annotations

import base64
import secrets

import pytest
from epm_service.secretbox import SecretBox, SecretBoxError, key_id, parse_master_key


def new_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def test_a_sealed_secret_opens_with_the_same_key_and_context() -> None:
    box = SecretBox.from_master_key(new_key())
    sealed = box.seal_text("whsec_topsecret", "channel:ch-1")
    assert "topsecret" not in sealed
    assert sealed.startswith(box.key_id + ":")
    assert box.open_text(sealed, "channel:ch-1") == "whsec_topsecret"


def test_sealing_twice_gives_different_ciphertexts() -> None:
    box = SecretBox.from_master_key(new_key())
    assert box.seal(b"x") != box.seal(b"x")


def test_a_secret_sealed_for_one_record_does_not_open_for_another() -> None:
    box = SecretBox.from_master_key(new_key())
    sealed = box.seal(b"s", "channel:ch-1")
    with pytest.raises(SecretBoxError, match="sealed for another record"):
        box.open(sealed, "channel:ch-2")


def test_a_tampered_secret_does_not_open() -> None:
    box = SecretBox.from_master_key(new_key())
    kid, body = box.seal(b"secret").split(":")
    raw = bytearray(base64.b64decode(body))
    raw[-1] ^= 1
    with pytest.raises(SecretBoxError, match="altered"):
        box.open(f"{kid}:{base64.b64encode(bytes(raw)).decode()}")


def test_another_master_key_cannot_open_it_and_says_which_key_is_needed() -> None:
    sealed = SecretBox.from_master_key(new_key()).seal(b"s")
    with pytest.raises(SecretBoxError, match=sealed.split(":")[0]):
        SecretBox.from_master_key(new_key()).open(sealed)


def test_after_rotation_old_secrets_open_and_new_ones_use_the_new_key() -> None:
    old, new = new_key(), new_key()
    sealed_old = SecretBox.from_master_key(old).seal(b"old")
    rotated = SecretBox.from_master_key(new, older=[old])
    assert rotated.open(sealed_old) == b"old"
    assert rotated.seal(b"n").startswith(key_id(parse_master_key(new)) + ":")


def test_master_key_accepts_base64_and_hex_and_refuses_anything_else() -> None:
    raw = secrets.token_bytes(32)
    assert parse_master_key(base64.b64encode(raw).decode()) == raw
    assert parse_master_key(raw.hex()) == raw
    for bad in ("short", base64.b64encode(b"x" * 16).decode(), "not base64 at all!!"):
        with pytest.raises(SecretBoxError, match="32 random bytes"):
            parse_master_key(bad)


def test_a_missing_master_key_is_explained() -> None:
    with pytest.raises(SecretBoxError, match="EPM_MASTER_KEY is not set"):
        SecretBox.from_master_key(None)


def test_keys_never_show_in_repr_or_errors() -> None:
    key = new_key()
    box = SecretBox.from_master_key(key)
    assert key not in repr(box)
    try:
        parse_master_key(key[:-4])
    except SecretBoxError as exc:
        assert key[:-4] not in str(exc)


def test_derived_material_is_stable_per_purpose_and_key() -> None:
    key = new_key()
    a, b = SecretBox.from_master_key(key), SecretBox.from_master_key(key)
    assert a.derive("vapid") == b.derive("vapid")
    assert a.derive("vapid") != a.derive("other")
    assert a.derive("vapid") != SecretBox.from_master_key(new_key()).derive("vapid")
