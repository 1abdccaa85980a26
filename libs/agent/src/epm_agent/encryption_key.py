"""The device's X25519 key: the server seals offline key material (and self-generated
codes) to its public half. Made at enrollment, kept in the state dir (0600), never shown."""

from __future__ import annotations

import base64
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from epm_domain.sealed import new_private_key

from epm_agent.errors import AgentError
from epm_agent.private_file import write_private_file


class EncryptionKey:
    """``repr`` shows the public half only."""

    def __init__(self, private_raw: bytes) -> None:
        if len(private_raw) != 32:
            raise AgentError("the device's encryption key is damaged; enroll again")
        self._private = private_raw

    @classmethod
    def generate(cls) -> EncryptionKey:
        private, _ = new_private_key()
        return cls(private)

    @classmethod
    def load(cls, path: Path) -> EncryptionKey:
        try:
            return cls(path.read_bytes())
        except FileNotFoundError:
            raise AgentError(
                f"the device's encryption key {path} is missing, so its offline key material "
                "cannot be opened; enroll again into a fresh --state-dir"
            ) from None

    def save(self, path: Path) -> None:
        write_private_file(path, self._private)

    @property
    def private_raw(self) -> bytes:
        return self._private

    def public_key_b64(self) -> str:
        """The raw 32-byte X25519 public key, standard base64: enrollment's encryption_key."""
        public = X25519PrivateKey.from_private_bytes(self._private).public_key()
        return base64.b64encode(public.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()

    def __repr__(self) -> str:
        return f"EncryptionKey(public={self.public_key_b64()})"
