"""Offline codes: the cryptography shared by approval-svc (which issues) and the agent (which
verifies with no network). Pure: stdlib only, no I/O.

Keys
    device key = HKDF-SHA256(tenant master key, salt = tenant id,
                             info = purpose | device id | key version)

Response code (challenge-response, DESIGN.md "Offline codes")
    HMAC-SHA256(device key["response"], length-prefixed fields: device id,
    request code, grant kind, application SHA-256 or "*", minutes, key version),
    truncated to 60 bits, written as 12 Crockford base32 characters,
    shown ``XXXX-XXXX-XXXX``.

Offline access code (issued ahead of time)
    60 bits = 20 bits of parameters in clear + a 40-bit MAC.
    Parameters: counter (11 bits: 2,048 codes per device key version),
    purpose (1 bit: app | admin), option (3 bits: for admin the minutes index
    into ADMIN_MINUTES; for app 1 = pinned to one SHA-256, 0 = any), expiry
    (5 bits: the expiry day modulo 32, days since 1970-01-01 UTC).
    MAC = HMAC-SHA256(device key["access-code"], device id, counter, purpose,
    option, full expiry day, pinned SHA-256 or "*", key version)[:40 bits].
    The agent rebuilds the full expiry day as the first day >= today with that
    residue; a code past its day therefore rebuilds to a later day and fails
    its MAC (an expired code never verifies, whatever the clock offset within
    32 days). Codes are valid for at most 31 days.

Guessing odds
    A response code is one of 2^60 per challenge; an access code's MAC one of
    2^40 per parameter set. With MAX_TRIES wrong entries per challenge and a
    lockout that doubles (see ``lockout_after``), an attacker gets about
    1,120 guesses per device per year (3 a day once the cool-off reaches a
    day): odds about 2^-30 for access codes and 2^-50 for response codes
    (README, "Security: offline codes").
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Literal

Purpose = Literal["app", "admin"]
Grant = Literal["app", "admin"]

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_DECODE = {c: i for i, c in enumerate(CROCKFORD)}
_DECODE.update({"O": 0, "I": 1, "L": 1})

ADMIN_MINUTES: tuple[int, ...] = (15, 30, 60, 120, 240, 480, 720, 1440)
MAX_COUNTER = 2**11 - 1
MAX_VALID_DAYS = 31
EPOCH = date(1970, 1, 1)


class CodeError(ValueError):
    """A code that cannot be what it claims; ``reason`` is machine-readable."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# --- keys -----------------------------------------------------------------------------


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """RFC 5869."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    okm, block, counter = b"", b"", 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
        counter += 1
    return okm[:length]


def device_key(master: bytes, tenant: str, device_id: str, key_version: int, purpose: str) -> bytes:
    info = _fields(purpose, device_id, str(key_version))
    return hkdf_sha256(master, tenant.encode(), info)


def _fields(*parts: str) -> bytes:
    return b"".join(len(p.encode()).to_bytes(2, "big") + p.encode() for p in parts)


# --- text form --------------------------------------------------------------------------


def to_text(value: int) -> str:
    """60 bits -> ``XXXX-XXXX-XXXX``."""
    chars = "".join(CROCKFORD[(value >> (5 * (11 - i))) & 31] for i in range(12))
    return f"{chars[:4]}-{chars[4:8]}-{chars[8:]}"


def from_text(text: str) -> int:
    """Tolerant: any case, dashes and spaces ignored, O read as 0, I and L as 1."""
    cleaned = "".join(c for c in text.upper() if c not in "- \t")
    if len(cleaned) != 12:
        raise CodeError("format", "a code has 12 characters, like ABCD-EFGH-JKMN")
    value = 0
    for c in cleaned:
        if c not in _DECODE:
            raise CodeError("format", f"{c!r} is not a code character")
        value = (value << 5) | _DECODE[c]
    return value


def new_request_code(used: set[str] | frozenset[str] = frozenset()) -> str:
    """Six random digits this device has never shown before."""
    if len(used) >= 900_000:
        raise CodeError("exhausted", "this device has used most request codes; rotate its key")
    while True:
        code = f"{secrets.randbelow(1_000_000):06d}"
        if code not in used:
            return code


# --- response codes -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResponseGrant:
    grant: Grant
    sha256: str | None = None  # app grants: the application; None = "*" (policy must allow)
    minutes: int = 0  # admin grants

    def fields(self) -> tuple[str, str, str]:
        return self.grant, (self.sha256 or "*").lower(), str(self.minutes)


def response_code(
    key: bytes, device_id: str, request_code: str, grant: ResponseGrant, key_version: int
) -> str:
    mac = hmac.new(
        key, _fields(device_id, request_code, *grant.fields(), str(key_version)), hashlib.sha256
    ).digest()
    return to_text(int.from_bytes(mac[:8], "big") >> 4)


def verify_response(
    key: bytes,
    device_id: str,
    request_code: str,
    grant: ResponseGrant,
    key_version: int,
    entered: str,
) -> bool:
    try:
        got = from_text(entered)
    except CodeError:
        return False
    want = from_text(response_code(key, device_id, request_code, grant, key_version))
    return hmac.compare_digest(got.to_bytes(8, "big"), want.to_bytes(8, "big"))


# --- offline access codes ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccessCode:
    counter: int
    purpose: Purpose
    expires_on: date  # valid through the end of this UTC day
    minutes: int = 0  # admin codes
    pinned_sha256: str | None = None  # app codes

    @property
    def option(self) -> int:
        if self.purpose == "admin":
            return ADMIN_MINUTES.index(self.minutes)
        return 1 if self.pinned_sha256 else 0


def _day(d: date) -> int:
    return (d - EPOCH).days


def _access_mac(key: bytes, device_id: str, code: AccessCode, key_version: int) -> int:
    msg = _fields(
        device_id,
        str(code.counter),
        code.purpose,
        str(code.option),
        str(_day(code.expires_on)),
        (code.pinned_sha256 or "*").lower(),
        str(key_version),
    )
    return int.from_bytes(hmac.new(key, msg, hashlib.sha256).digest()[:5], "big")


def issue_access_code(
    key: bytes, device_id: str, code: AccessCode, key_version: int, today: date
) -> str:
    if not 0 <= code.counter <= MAX_COUNTER:
        raise CodeError("counter", f"counter must be 0..{MAX_COUNTER}; rotate the device key")
    if code.purpose == "admin" and code.minutes not in ADMIN_MINUTES:
        raise CodeError("minutes", f"admin minutes must be one of {ADMIN_MINUTES}")
    if not today <= code.expires_on <= today + timedelta(days=MAX_VALID_DAYS):
        raise CodeError("expiry", f"a code expires within {MAX_VALID_DAYS} days")
    params = (
        (code.counter << 9)
        | ((code.purpose == "admin") << 8)
        | (code.option << 5)
        | (_day(code.expires_on) % 32)
    )
    return to_text((params << 40) | _access_mac(key, device_id, code, key_version))


@dataclass(frozen=True, slots=True)
class ClaimedAccessCode:
    """What the 20 clear bits of a code say, before its MAC is checked."""

    counter: int
    purpose: Purpose
    option: int
    expiry_residue: int
    mac: int


def read_access_code(text: str) -> ClaimedAccessCode:
    value = from_text(text)
    params, mac = value >> 40, value & (2**40 - 1)
    return ClaimedAccessCode(
        counter=params >> 9,
        purpose="admin" if (params >> 8) & 1 else "app",
        option=(params >> 5) & 7,
        expiry_residue=params & 31,
        mac=mac,
    )


def verify_access_code(
    key: bytes, device_id: str, text: str, key_version: int, today: date, sha256: str | None = None
) -> AccessCode:
    """The code's grant if it is genuine, for this device and key version, and not expired.

    ``sha256`` is the application being elevated (needed for pinned app codes).
    Raises CodeError with a reason; the caller tracks used counters and tries.
    """
    claimed = read_access_code(text)
    day = _day(today)
    expires_day = day + ((claimed.expiry_residue - day) % 32)
    if claimed.purpose == "admin":
        code = AccessCode(
            claimed.counter,
            "admin",
            EPOCH + timedelta(days=expires_day),
            minutes=ADMIN_MINUTES[claimed.option],
        )
    else:
        if claimed.option > 1:
            raise CodeError("invalid", "this is not a valid offline access code")
        if claimed.option == 1 and not sha256:
            raise CodeError("pinned", "this code is for one application: run it for that one")
        code = AccessCode(
            claimed.counter,
            "app",
            EPOCH + timedelta(days=expires_day),
            pinned_sha256=sha256 if claimed.option == 1 else None,
        )
    want = _access_mac(key, device_id, code, key_version)
    if not hmac.compare_digest(want.to_bytes(5, "big"), claimed.mac.to_bytes(5, "big")):
        raise CodeError(
            "invalid",
            "this code is not valid here: wrong device, wrong application, expired, "
            "or issued before the device key was rotated",
        )
    return code


def code_hash(text: str) -> str:
    """A response code as the agent keeps it once used (it reaches an event only then, when
    it can open nothing more): never the code itself."""
    return hashlib.sha256(to_text(from_text(text)).encode()).hexdigest()


ACCESS_CODE_HASH_PREFIX = "hmac:"
_ACCESS_CODE_HASH_INFO = b"epm access code hash"


def access_code_hash(text: str, access_code_key: bytes) -> str:
    """How an access code is kept in events (OfflineCodeIssued, and OfflineCodeRedeemed from
    the agent): keyed by the device's access-code key of the code's version, so only the
    server and that device can compute it.

    An unkeyed hash would let anyone who reads the events (an integrator, an auditor)
    recover an UNUSED code: 20 of its 60 bits are in the same event (counter, purpose,
    expiry day), which leaves 2^40 tries of SHA-256, minutes on one GPU. Prefixed, so it is
    never taken for the unkeyed hash of events written before."""
    key = hkdf_sha256(access_code_key, b"", _ACCESS_CODE_HASH_INFO)
    canonical = to_text(from_text(text)).encode()
    return ACCESS_CODE_HASH_PREFIX + hmac.new(key, canonical, hashlib.sha256).hexdigest()


# --- wrong entries --------------------------------------------------------------------------

MAX_TRIES = 3
BASE_LOCKOUT_SECONDS = 300


def delay_after(failures: int) -> float:
    """Seconds to wait before the next try of one challenge: 0, 2, 4, ..."""
    return 0.0 if failures <= 0 else float(2 ** min(failures, 6))


def lockout_after(lockouts: int) -> float:
    """Device-wide lockout length: 5 minutes, doubling with each lockout, capped at a day."""
    return float(min(BASE_LOCKOUT_SECONDS * 2**lockouts, 86_400))
