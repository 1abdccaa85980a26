"""Signed checkpoints: pure functions, no I/O.

A checkpoint (AuditCheckpointSigned) states a chain's head, ``{"<tenant>":
{"hash", "records"}}``, and an Ed25519 signature over the RFC 8785 JSON of
exactly that object, made with the key named by ``key_id`` (AuditKeyCreated,
public halves at ``GET /v1/audit/keys``). Each chain is checkpointed on its
own and the checkpoint is appended to that same tenant, so it becomes a record
of the chain it signs: a tenant's export carries its signatures, verifies
with the published key alone, and shows nobody another tenant's heads.

A checkpoint is itself a record, so the rule below never counts it as new:
a chain whose only record since its last checkpoint is that checkpoint is
not due, and signing cannot feed on itself.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from epm_events.ids import derived_event_id

from epm_audit.chain import ChainHead

CHECKPOINT = "AuditCheckpointSigned"
KEY_CREATED = "AuditKeyCreated"
FIRST_KEY_ID = "audit-1"


def heads_document(heads: Mapping[str, ChainHead]) -> bytes:
    """What a checkpoint signature covers: the RFC 8785 JSON of its heads."""
    return rfc8785.dumps({t: {"hash": h.hash, "records": h.records} for t, h in heads.items()})


def sign_heads(key: Ed25519PrivateKey, heads: Mapping[str, ChainHead]) -> str:
    """The base64 Ed25519 signature of ``heads_document(heads)``."""
    return base64.b64encode(key.sign(heads_document(heads))).decode()


def signature_problem(
    public_keys: Mapping[str, bytes], key_id: str, heads: Mapping[str, ChainHead], signature: str
) -> str | None:
    """Why a checkpoint's signature does not hold, or None if it does."""
    public = public_keys.get(key_id)
    if public is None:
        known = ", ".join(sorted(public_keys)) or "none"
        return f"signed with key {key_id!r}, which is not among the public keys given ({known})"
    try:
        raw = base64.b64decode(signature, validate=True)
        Ed25519PublicKey.from_public_bytes(public).verify(raw, heads_document(heads))
    except (binascii.Error, ValueError):
        return "the signature is not base64 Ed25519"
    except InvalidSignature:
        return f"the signature does not verify with public key {key_id!r}"
    return None


def public_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def checkpoint_id(tenant: str, head: ChainHead) -> str:
    """The same chain head gives the same id on every replica: signed once, appended once."""
    return derived_event_id(f"audit:{tenant}:{head.records}:{head.hash}", CHECKPOINT)


def key_context(key_id: str) -> str:
    """The secretbox context the private key is sealed under."""
    return f"auditkey:{key_id}"


@dataclass(frozen=True, slots=True)
class CheckpointPolicy:
    """Sign a chain every ``every_records`` new records, or every ``every_seconds`` while it has
    any new record."""

    every_records: int = 1000
    every_seconds: float = 60.0

    def due(self, head_records: int, covered: int, seconds_since: float) -> bool:
        """``covered``: records the chain's last checkpoint signed (0: none); that checkpoint's
        own record is somewhere after them and is not new."""
        new = head_records - covered - (1 if covered else 0)
        if new <= 0:
            return False
        return new >= self.every_records or seconds_since >= self.every_seconds


def parse_public_keys(document: object) -> dict[str, bytes]:
    """``{key_id: raw public key}`` from what ``GET /v1/audit/keys`` answers (``{"items": [...]}``,
    or the list alone); ValueError naming what is wrong."""
    items = document.get("items") if isinstance(document, dict) else document
    if not isinstance(items, list):
        raise ValueError('expected {"items": [{"key_id", "public_key"}, ...]}')
    keys: dict[str, bytes] = {}
    for item in items:
        try:
            raw = base64.b64decode(str(item["public_key"]), validate=True)
            Ed25519PublicKey.from_public_bytes(raw)
            keys[str(item["key_id"])] = raw
        except (KeyError, TypeError, binascii.Error, ValueError):
            raise ValueError(f"not an Ed25519 public key entry: {item!r}") from None
    return keys
