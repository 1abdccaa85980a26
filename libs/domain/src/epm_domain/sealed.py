"""Sealing a secret to one device, and opening it there. Pure: no I/O.

A device enrolls with an X25519 public key (``encryption_key``); the server
seals each device's offline key material to it, so the material travels in the
enrollment answer and on EPM_DEVICE without anyone but the device reading it.

Format (``SEALED_ALG``), every byte string base64 (standard, padded)::

    {"alg": "X25519-HKDF-SHA256-A256GCM", "epk": <32 bytes>, "nonce": <12 bytes>,
     "ciphertext": <AES-256-GCM ciphertext || 16-byte tag>}

    shared = X25519(ephemeral private key, device public key)
    key    = HKDF-SHA256(ikm = shared, salt = epk || device public key,
                         info = b"epm sealed v1", length = 32)
    ciphertext = AES-256-GCM(key, nonce, plaintext, associated data = context)

A fresh ephemeral key per message (so the nonce never repeats under one key);
``context`` names what the secret is for (see ``key_material_context``), so a
sealed value moved into another message, device or key version does not open.

Device key material (``DeviceKeys``) is the plaintext sealed at enrollment and
at each rotation: JSON ``{"tenant", "device_id", "key_version",
"response": <32 bytes b64>, "access_code": <32 bytes b64>}``, the two keys of
``epm_domain.offline_codes.device_key`` for purposes "response" and
"access-code".
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from epm_domain.offline_codes import device_key

SEALED_ALG = "X25519-HKDF-SHA256-A256GCM"
_INFO = b"epm sealed v1"
PURPOSE_RESPONSE = "response"
PURPOSE_ACCESS_CODE = "access-code"


class SealedError(ValueError):
    """Sealed data that cannot be opened here; the message says why."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(value: Any, what: str, length: int | None = None) -> bytes:
    try:
        raw = base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        raise SealedError(f"{what} is not valid base64") from None
    if length is not None and len(raw) != length:
        raise SealedError(f"{what} must be {length} bytes (got {len(raw)})")
    return raw


def parse_public_key(value: str) -> bytes:
    """A raw 32-byte X25519 public key in standard base64 (what the agent enrolls with)."""
    return _unb64(value, "encryption_key (an X25519 public key)", 32)


def new_private_key() -> tuple[bytes, bytes]:
    """(private, public), raw 32 bytes each: what an agent creates once and keeps."""
    private = X25519PrivateKey.generate()
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return private.private_bytes_raw(), public


def _key(shared: bytes, epk: bytes, recipient: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=epk + recipient, info=_INFO).derive(
        shared
    )


def seal(recipient_public: bytes, plaintext: bytes, context: bytes) -> dict[str, str]:
    recipient = X25519PublicKey.from_public_bytes(recipient_public)
    ephemeral = X25519PrivateKey.generate()
    epk = ephemeral.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    key = _key(ephemeral.exchange(recipient), epk, recipient_public)
    nonce = secrets.token_bytes(12)
    ciphertext = AESGCM(key).encrypt(nonce, plaintext, context)
    return {
        "alg": SEALED_ALG,
        "epk": _b64(epk),
        "nonce": _b64(nonce),
        "ciphertext": _b64(ciphertext),
    }


def open_sealed(private_key: bytes, sealed: Any, context: bytes) -> bytes:
    """The plaintext, or SealedError if it was not sealed to this key for this context."""
    if not isinstance(sealed, dict) or sealed.get("alg") != SEALED_ALG:
        raise SealedError(f"sealed data must be an object with alg {SEALED_ALG!r}")
    epk = _unb64(sealed.get("epk"), "epk", 32)
    nonce = _unb64(sealed.get("nonce"), "nonce", 12)
    ciphertext = _unb64(sealed.get("ciphertext"), "ciphertext")
    private = X25519PrivateKey.from_private_bytes(private_key)
    own_public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(epk))
        return AESGCM(_key(shared, epk, own_public)).decrypt(nonce, ciphertext, context)
    except (InvalidTag, ValueError):
        raise SealedError(
            "sealed data does not open with this device's key: it was sealed for another "
            "device or purpose, or altered"
        ) from None


# --- device key material ---------------------------------------------------------------


def key_material_context(tenant: str, device_id: str, key_version: int) -> bytes:
    return f"epm key material\x1f{tenant}\x1f{device_id}\x1f{key_version}".encode()


@dataclass(frozen=True, slots=True)
class DeviceKeys:
    tenant: str
    device_id: str
    key_version: int
    response: bytes  # offline_codes.device_key(..., "response")
    access_code: bytes  # offline_codes.device_key(..., "access-code")

    def __repr__(self) -> str:  # keys never in logs or tracebacks
        return f"DeviceKeys({self.tenant}/{self.device_id} v{self.key_version})"


def derive_device_keys(master: bytes, tenant: str, device_id: str, key_version: int) -> DeviceKeys:
    return DeviceKeys(
        tenant,
        device_id,
        key_version,
        device_key(master, tenant, device_id, key_version, PURPOSE_RESPONSE),
        device_key(master, tenant, device_id, key_version, PURPOSE_ACCESS_CODE),
    )


def seal_device_keys(keys: DeviceKeys, recipient_public: bytes) -> dict[str, Any]:
    """``key_material`` as the enrollment answer and ``epm.device.<t>.<d>.key`` carry it."""
    plaintext = json.dumps(
        {
            "tenant": keys.tenant,
            "device_id": keys.device_id,
            "key_version": keys.key_version,
            "response": _b64(keys.response),
            "access_code": _b64(keys.access_code),
        }
    ).encode()
    context = key_material_context(keys.tenant, keys.device_id, keys.key_version)
    return {"key_version": keys.key_version, "sealed": seal(recipient_public, plaintext, context)}


def open_device_keys(
    key_material: Any, private_key: bytes, tenant: str, device_id: str
) -> DeviceKeys:
    """What the agent does with ``key_material``: its two offline keys for that version."""
    if not isinstance(key_material, dict) or not isinstance(key_material.get("key_version"), int):
        raise SealedError("key_material must be an object with an integer key_version")
    version = int(key_material["key_version"])
    context = key_material_context(tenant, device_id, version)
    try:
        data = json.loads(open_sealed(private_key, key_material.get("sealed"), context))
    except json.JSONDecodeError:
        raise SealedError("key material is not JSON") from None
    if (data.get("tenant"), data.get("device_id"), data.get("key_version")) != (
        tenant,
        device_id,
        version,
    ):
        raise SealedError("key material is for another device or key version")
    return DeviceKeys(
        tenant,
        device_id,
        version,
        _unb64(data.get("response"), "response key", 32),
        _unb64(data.get("access_code"), "access-code key", 32),
    )


# --- one sealed value for one signed device command ----------------------------------------


def reply_context(tenant: str, device_id: str, msg_id: str) -> bytes:
    """Context of a secret in the reply to a device's signed command (its message id)."""
    return f"epm device reply\x1f{tenant}\x1f{device_id}\x1f{msg_id}".encode()
