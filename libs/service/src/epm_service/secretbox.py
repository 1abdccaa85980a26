"""Secrets at rest and in events: AES-256-GCM under the deployment key ``EPM_MASTER_KEY``.

A sealed secret reads ``<key id>:<base64(nonce || ciphertext)>``: a 96-bit
random nonce, then the ciphertext with its 128-bit tag. The key id is a short
fingerprint of the key that sealed it (not the key), so when the master key
is rotated the box can be given the old key as well and still open what the
old key sealed, while sealing only with the new one.

A *context* (for instance ``"channel:ch-123"``) is bound in as associated
data: a ciphertext copied into another record does not open there.

Keys never appear in ``repr``, logs or error messages.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
NONCE_BYTES = 12


class SecretBoxError(ValueError):
    """A key or a sealed secret that cannot be used; the message says what to do."""


def secret_hash(secret: str) -> str:
    """How bearer and enrollment tokens are kept at rest and in events: SHA-256 hex.

    Tokens are 256-bit random, so a fast unsalted hash is enough to make a leaked
    table useless, and it lets a replica look a token up by its hash."""
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_master_key(value: str) -> bytes:
    """``EPM_MASTER_KEY``: 32 random bytes as base64 (what ``epm dev`` writes) or 64 hex digits."""
    text = value.strip()
    raw: bytes | None = None
    if len(text) == 2 * KEY_BYTES:
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raw = None
    if raw is None:
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raw = None
    if raw is None or len(raw) != KEY_BYTES:
        raise SecretBoxError(
            "EPM_MASTER_KEY must be 32 random bytes, base64-encoded (44 characters) or as 64 hex "
            'digits; create one with: python -c "import base64,secrets;'
            'print(base64.b64encode(secrets.token_bytes(32)).decode())"'
        )
    return raw


def key_id(key: bytes) -> str:
    """A fingerprint naming a key in sealed secrets; reveals nothing useful about the key."""
    return "k" + hashlib.sha256(b"epm secretbox key id\x1f" + key).hexdigest()[:8]


class SecretBox:
    """Seals with the current key; opens with the current key or any older one given."""

    __slots__ = ("_current", "_keys")

    def __init__(self, current: bytes, older: Sequence[bytes] = ()) -> None:
        for k in (current, *older):
            if len(k) != KEY_BYTES:
                raise SecretBoxError("a secret box key is exactly 32 bytes")
        self._current = key_id(current)
        self._keys = {key_id(k): k for k in (*older, current)}

    @classmethod
    def from_master_key(cls, master_key: str | None, older: Sequence[str] = ()) -> SecretBox:
        if not master_key:
            raise SecretBoxError(
                "EPM_MASTER_KEY is not set: secrets are stored encrypted under it. "
                "epm dev creates one in its data dir; elsewhere set it from a Kubernetes Secret"
            )
        previous = []
        for k in older:
            try:
                previous.append(parse_master_key(k))
            except SecretBoxError:
                raise SecretBoxError(
                    "a key in EPM_MASTER_KEY_PREVIOUS is not a master key: give the earlier"
                    " EPM_MASTER_KEY values, comma-separated, each 32 random bytes as base64"
                    " or 64 hex digits"
                ) from None
        return cls(parse_master_key(master_key), previous)

    @property
    def key_id(self) -> str:
        return self._current

    def __repr__(self) -> str:
        return f"SecretBox(key_id={self._current!r}, keys={len(self._keys)})"

    def seal(self, plaintext: bytes, context: str = "") -> str:
        nonce = secrets.token_bytes(NONCE_BYTES)
        aead = AESGCM(self._keys[self._current])
        sealed = aead.encrypt(nonce, plaintext, _aad(self._current, context))
        return f"{self._current}:{base64.b64encode(nonce + sealed).decode()}"

    def open(self, sealed: str, context: str = "") -> bytes:
        kid, sep, body = sealed.partition(":")
        if not sep:
            raise SecretBoxError("not a sealed secret: expected '<key id>:<base64>'")
        key = self._keys.get(kid)
        if key is None:
            raise SecretBoxError(
                f"sealed under key {kid}, which this deployment does not have: set the "
                "EPM_MASTER_KEY it was sealed with (or give it as an older key)"
            )
        try:
            raw = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise SecretBoxError("sealed secret is not valid base64") from None
        if len(raw) < NONCE_BYTES + 16:
            raise SecretBoxError("sealed secret is too short to be AES-GCM output")
        try:
            return AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], _aad(kid, context))
        except InvalidTag:
            raise SecretBoxError(
                "sealed secret does not open: it was altered, or sealed for another record"
            ) from None

    def seal_text(self, plaintext: str, context: str = "") -> str:
        return self.seal(plaintext.encode(), context)

    def open_text(self, sealed: str, context: str = "") -> str:
        return self.open(sealed, context).decode()

    def derive(self, purpose: str, length: int = KEY_BYTES) -> bytes:
        """Key material for one purpose (HKDF-SHA256 of the current key), the same on every
        replica and after every rebuild; it changes when the master key is rotated."""
        hkdf = HKDF(
            algorithm=hashes.SHA256(), length=length, salt=b"epm secretbox", info=purpose.encode()
        )
        return hkdf.derive(self._keys[self._current])


def _aad(kid: str, context: str) -> bytes:
    return f"epm secretbox\x1f{kid}\x1f{context}".encode()
