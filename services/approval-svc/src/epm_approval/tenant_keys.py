"""Tenant master keys for offline codes, held only as ciphertext under ``EPM_MASTER_KEY``.

A tenant's key is 32 random bytes, created on its first need and recorded as
TenantKeyCreated (``tenantkey.<tenant>``, appended with expected sequence 0, so
of two replicas creating it at once exactly one key is stored and both use it).
A rebuilt projection gets the same ciphertext back from the stream.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from epm_service.errors import Unavailable
from epm_service.secretbox import SecretBox, SecretBoxError

KEY_BYTES = 32


def sealing_context(tenant: str, key_version: int) -> str:
    return f"tenantkey:{tenant}:{key_version}"


class TenantKeyring:
    """Seals new tenant keys and opens stored ones; opened keys are kept in memory only."""

    def __init__(self, master_key: str | None, previous: Sequence[str] = ()) -> None:
        self._master_key = master_key
        self._previous = tuple(previous)  # EPM_MASTER_KEY_PREVIOUS: open old keys, seal none
        self._box: SecretBox | None = None
        self._opened: dict[tuple[str, int, str], bytes] = {}

    def __repr__(self) -> str:
        return f"TenantKeyring(opened={len(self._opened)})"

    def _secretbox(self) -> SecretBox:
        if self._box is None:
            try:
                self._box = SecretBox.from_master_key(self._master_key, self._previous)
            except SecretBoxError as exc:
                raise Unavailable(f"offline codes need the deployment key: {exc}") from None
        return self._box

    def new_key(self, tenant: str, key_version: int) -> str:
        """A fresh tenant key, sealed: the ciphertext TenantKeyCreated carries."""
        key = secrets.token_bytes(KEY_BYTES)
        return self._secretbox().seal(key, sealing_context(tenant, key_version))

    def open(self, tenant: str, key_version: int, ciphertext: str) -> bytes:
        found = self._opened.get((tenant, key_version, ciphertext))
        if found is None:
            try:
                found = self._secretbox().open(ciphertext, sealing_context(tenant, key_version))
            except SecretBoxError as exc:
                raise Unavailable(f"the offline key of tenant {tenant!r}: {exc}") from None
            self._opened[(tenant, key_version, ciphertext)] = found
        return found
