"""Enrollment tokens and device ids: pure rules, no I/O."""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass
from datetime import datetime

from epm_events.ids import new_id
from epm_service.secretbox import secret_hash

TOKEN_PREFIX = "enr_"
DEFAULT_TTL_SECONDS = 7 * 86400


class EnrollmentError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def new_enrollment_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


hash_secret = secret_hash  # tokens are stored and sent in events only as this hash


def new_device_id() -> str:
    return "d-" + secrets.token_hex(8)


def new_enrollment_id() -> str:
    return new_id("enr")


@dataclass(frozen=True, slots=True)
class EnrollmentToken:
    id: str
    tenant: str
    expires_at: datetime
    used_by: str | None
    last_seq: int


def check_usable(token: EnrollmentToken | None, now: datetime) -> EnrollmentToken:
    if token is None:
        raise EnrollmentError(
            "unknown",
            "unknown enrollment token: ask your administrator for a new one "
            "(epm enrollment-token create)",
        )
    if token.used_by is not None:
        raise EnrollmentError(
            "used",
            "this enrollment token was already used; each token enrolls one device: "
            "ask your administrator for a new one",
        )
    if now >= token.expires_at:
        raise EnrollmentError(
            "expired",
            f"this enrollment token expired at {token.expires_at.isoformat()}; "
            "ask your administrator for a new one",
        )
    return token


def parse_public_key(value: str) -> bytes:
    """A raw 32-byte Ed25519 public key in standard base64."""
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise EnrollmentError(
            "bad_key", "public_key must be a raw 32-byte Ed25519 public key in base64"
        )
    return raw
