"""Sealing key material to one device (epm_domain.sealed): only that device, that context."""

from __future__ import annotations

import secrets

import pytest
from epm_domain.sealed import (
    SealedError,
    derive_device_keys,
    new_private_key,
    open_device_keys,
    open_sealed,
    seal,
    seal_device_keys,
)

MASTER = secrets.token_bytes(32)


def test_sealed_data_opens_with_the_recipient_key_and_context_only() -> None:
    private, public = new_private_key()
    other, _ = new_private_key()
    sealed = seal(public, b"secret", b"ctx")
    assert open_sealed(private, sealed, b"ctx") == b"secret"
    with pytest.raises(SealedError):
        open_sealed(other, sealed, b"ctx")
    with pytest.raises(SealedError):
        open_sealed(private, sealed, b"another ctx")


def test_altered_sealed_data_does_not_open() -> None:
    private, public = new_private_key()
    sealed = seal(public, b"secret", b"ctx")
    tampered = dict(sealed, ciphertext=seal(public, b"secreT", b"ctx")["ciphertext"])
    with pytest.raises(SealedError):
        open_sealed(private, tampered, b"ctx")
    with pytest.raises(SealedError, match="alg"):
        open_sealed(private, {**sealed, "alg": "none"}, b"ctx")


def test_each_seal_is_fresh() -> None:
    _, public = new_private_key()
    assert seal(public, b"x", b"c") != seal(public, b"x", b"c")


def test_device_key_material_round_trips_for_its_device_and_version_only() -> None:
    private, public = new_private_key()
    keys = derive_device_keys(MASTER, "acme", "d-1", 2)
    material = seal_device_keys(keys, public)
    assert material["key_version"] == 2
    assert open_device_keys(material, private, "acme", "d-1") == keys
    with pytest.raises(SealedError):
        open_device_keys(material, private, "acme", "d-2")
    with pytest.raises(SealedError):
        open_device_keys({**material, "key_version": 3}, private, "acme", "d-1")


def test_device_keys_differ_by_purpose_device_and_version_and_never_show_in_repr() -> None:
    a = derive_device_keys(MASTER, "acme", "d-1", 1)
    assert a.response != a.access_code
    assert a.response != derive_device_keys(MASTER, "acme", "d-2", 1).response
    assert a.access_code != derive_device_keys(MASTER, "acme", "d-1", 2).access_code
    assert a.response.hex() not in repr(a) and "acme/d-1 v1" in repr(a)
