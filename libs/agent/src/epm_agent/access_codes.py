"""Offline access codes on the agent: verify one, and say why a refused one is refused.
Pure: no I/O, no clock.

epm_domain.offline_codes.verify_access_code only answers "valid here" or not
(the MAC binds device, purpose, pin, expiry day and key version). When it says
no, the agent looks for a reason a person can act on: the same code under a key
version the device has retired (rotated), or the same code on an earlier day
(expired). Both need a genuine MAC, so a random guess almost never gets a
reason (32 days x the retired versions against 2^40), and only a guess that
fails everything counts as a wrong try.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Literal

from epm_domain.offline_codes import (
    MAX_VALID_DAYS,
    AccessCode,
    CodeError,
    verify_access_code,
)
from epm_domain.sealed import DeviceKeys

Verdict = Literal["valid", "expired", "rotated", "invalid"]


@dataclass(frozen=True, slots=True)
class Checked:
    verdict: Verdict
    code: AccessCode | None = None
    key_version: int = 0
    message: str = ""


def check_access_code(
    current: DeviceKeys,
    retired: Sequence[DeviceKeys],
    text: str,
    today: date,
    sha256: str | None,
) -> Checked:
    """Raises CodeError for codes that cannot be checked (format, pinned without an app)."""
    try:
        code = verify_access_code(
            current.access_code, current.device_id, text, current.key_version, today, sha256
        )
        return Checked("valid", code, current.key_version)
    except CodeError as exc:
        if exc.reason != "invalid":
            raise
    for keys in sorted(retired, key=lambda k: -k.key_version):
        if _genuine(keys, text, today, sha256):
            return Checked(
                "rotated",
                key_version=keys.key_version,
                message=f"this code was issued for key version {keys.key_version}, which was "
                f"rotated (this computer now uses version {current.key_version}); codes "
                "issued before a rotation stop working: ask for a new code",
            )
    for keys in (current, *retired):
        for back in range(1, MAX_VALID_DAYS + 1):
            earlier = today - timedelta(days=back)
            try:
                code = verify_access_code(
                    keys.access_code, keys.device_id, text, keys.key_version, earlier, sha256
                )
            except CodeError:
                continue
            if code.expires_on < today:
                return Checked(
                    "expired",
                    code,
                    keys.key_version,
                    f"this code expired at the end of {code.expires_on.isoformat()} (UTC); "
                    "ask for a new code",
                )
    return Checked(
        "invalid",
        message="this code is not valid on this computer: it is for another computer"
        + (" or another application" if sha256 else "")
        + ", or mistyped",
    )


def _genuine(keys: DeviceKeys, text: str, today: date, sha256: str | None) -> bool:
    try:
        verify_access_code(keys.access_code, keys.device_id, text, keys.key_version, today, sha256)
    except CodeError:
        return False
    return True
