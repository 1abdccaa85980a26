"""The device's Ed25519 key: made at enrollment, kept in the state dir (0600), never shown.

The server knows only the public half (sent at enrollment); every message the
agent publishes carries an Ed25519 signature by the private half.
"""

from __future__ import annotations

import base64
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from epm_agent.errors import AgentError
from epm_agent.private_file import write_private_file


class DeviceKey:
    """A device's signing key. ``repr`` never shows the private half."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private = private_key

    @classmethod
    def generate(cls) -> DeviceKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: Path) -> DeviceKey:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise AgentError(
                f"the device key {path} is missing; this state dir cannot sign requests. "
                "Enroll again with 'epm-agent enroll' into a fresh --state-dir"
            ) from None
        key = serialization.load_pem_private_key(raw, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise AgentError(f"the device key {path} is not an Ed25519 key; enroll again")
        return cls(key)

    def save(self, path: Path) -> None:
        pem = self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_private_file(path, pem)

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._private.public_key()

    def public_key_b64(self) -> str:
        """The raw 32-byte public key, standard base64: what enrollment sends."""
        return public_key_b64(self.public_key)

    def sign_b64(self, data: bytes) -> str:
        return base64.b64encode(self._private.sign(data)).decode()

    def __repr__(self) -> str:
        return f"DeviceKey(public={self.public_key_b64()})"


def public_key_b64(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()
