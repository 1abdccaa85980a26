"""Offline access, the pure part: what the tenant's policy allows, and a device's key state.

No I/O. The handlers (epm_approval.offline_commands) load the state, ask these
functions, then append what they return.

- ``check_response``: a help-desk response code within policy.
- ``check_code``: offline access codes within policy (issued or self-generated).
- ``DeviceKeyState`` / ``evolve_key``: the device's offline-key aggregate
  (``devicekey.<device id>``): its key version and the next unused counter
  (a lockout lift, OfflineLockoutLifted, is on it too and only moves its sequence).
  Counters are allocated per (device, key version) from 0 and never reused:
  every issue is appended with the aggregate's last sequence as expectation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal

from epm_domain.offline_codes import ADMIN_MINUTES, MAX_COUNTER, MAX_VALID_DAYS, ResponseGrant
from epm_events.catalog import (
    DeviceKeyRotated,
    Event,
    OfflineCodeIssued,
    OfflineLockoutLifted,
    OfflinePolicy,
    OfflineResponseIssued,
)

Purpose = Literal["app", "admin"]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
DEFAULT_CODE_SECONDS = 7 * 86400
MAX_CODE_SECONDS = MAX_VALID_DAYS * 86400
MIN_CODE_SECONDS = 60
MAX_CODES_PER_CALL = 50


class PolicyRefused(Exception):
    """The tenant's offline policy does not allow this; ``provision`` names the switch."""

    def __init__(self, provision: str, message: str) -> None:
        super().__init__(message)
        self.provision = provision


class BadGrant(ValueError):
    """Arguments that cannot describe a grant; the message says what to send."""


class CountersExhausted(Exception):
    """The device's key version has no unused counters left: rotate its key."""


def _disabled(provision: str, what: str) -> PolicyRefused:
    return PolicyRefused(
        provision,
        f"{what} is disabled by this tenant's offline policy ({provision}=false); "
        "a tenant admin can enable it (PUT /v1/tenants/{tenant}/offline-policy)",
    )


def sha256_of(value: object) -> str | None:
    """An application's SHA-256 as 64 lowercase hex digits, or None when not given."""
    if value is None or value == "" or value == "*":
        return None
    text = str(value).strip().lower()
    if not _SHA256.match(text):
        raise BadGrant("sha256 must be the application's SHA-256: 64 hexadecimal digits")
    return text


def _whole(value: object, key: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadGrant(f"{key} must be a whole number (got {value!r})")
    return value


# --- challenge-response -------------------------------------------------------------------


def check_request_code(value: object) -> str:
    text = str(value or "").replace(" ", "").replace("-", "")
    if not (len(text) == 6 and text.isdigit()):
        raise BadGrant("request_code is the 6 digits the computer shows, e.g. 123456")
    return text


def check_response(
    policy: OfflinePolicy, grant: str, sha256: object = None, minutes: object = None
) -> ResponseGrant:
    """The grant a response code may carry under ``policy``."""
    if not policy.challenge_response:
        raise _disabled("challenge_response", "challenge-response")
    mins = _whole(minutes, "minutes")
    app = sha256_of(sha256)
    if grant == "admin":
        if app is not None:
            raise BadGrant("a full-admin grant is for the whole computer: leave sha256 out")
        if mins is None or mins < 1:
            raise BadGrant("a full-admin grant needs minutes (what the computer asked for)")
        if mins > policy.max_admin_minutes:
            raise PolicyRefused(
                "max_admin_minutes",
                f"{mins} minutes of full admin is more than this tenant's policy allows "
                f"({policy.max_admin_minutes}); grant less, or ask a tenant admin to raise "
                "max_admin_minutes",
            )
        return ResponseGrant("admin", minutes=mins)
    if grant != "app":
        raise BadGrant(f"grant must be 'app' or 'admin' (got {grant!r})")
    if mins:
        raise BadGrant("minutes apply to full-admin grants only; leave them out for 'app'")
    if app is None and not policy.response_any_app:
        raise PolicyRefused(
            "response_any_app",
            "this tenant's offline policy requires the application's SHA-256 for an app grant "
            "(response_any_app=false): enter the SHA-256 the computer shows",
        )
    return ResponseGrant("app", sha256=app)


# --- offline access codes -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CodeGrant:
    purpose: Purpose
    expires_on: date  # valid through the end of this UTC day
    minutes: int = 0  # admin codes
    sha256: str | None = None  # app codes: pinned to one application, None = any

    @property
    def expires_at(self) -> datetime:
        """The end of the expiry day (UTC): when the agent stops accepting the code."""
        return datetime.combine(self.expires_on + timedelta(days=1), time(0), UTC)


def check_code(
    policy: OfflinePolicy,
    purpose: str,
    *,
    now: datetime,
    sha256: object = None,
    minutes: object = None,
    expires_in: object = None,
    self_generated: bool = False,
) -> CodeGrant:
    """What an offline access code may grant under ``policy``.

    The code is valid at least ``expires_in`` seconds (default 7 days, at most
    31 days), through the end of that UTC day: the code carries a day, not a time.
    """
    if self_generated and not policy.self_service:
        raise _disabled("self_service", "generating your own offline codes")
    seconds = _whole(expires_in, "expires_in")
    seconds = DEFAULT_CODE_SECONDS if seconds is None else seconds
    if not MIN_CODE_SECONDS <= seconds <= MAX_CODE_SECONDS:
        raise BadGrant(
            f"expires_in is in seconds, {MIN_CODE_SECONDS} to {MAX_CODE_SECONDS} (31 days)"
        )
    expires_on = (now + timedelta(seconds=seconds)).astimezone(UTC).date()
    mins = _whole(minutes, "minutes")
    app = sha256_of(sha256)
    if purpose == "admin":
        if not policy.admin_codes:
            raise _disabled("admin_codes", "temporary full-admin codes")
        if app is not None:
            raise BadGrant("a full-admin code is for the whole computer: leave sha256 out")
        if mins not in ADMIN_MINUTES:
            raise BadGrant(
                f"a full-admin code needs minutes, one of {', '.join(map(str, ADMIN_MINUTES))}"
            )
        if mins > policy.max_admin_minutes:
            raise PolicyRefused(
                "max_admin_minutes",
                f"{mins} minutes of full admin is more than this tenant's policy allows "
                f"({policy.max_admin_minutes}); choose fewer minutes, or ask a tenant admin "
                "to raise max_admin_minutes",
            )
        return CodeGrant("admin", expires_on, minutes=mins)
    if purpose != "app":
        raise BadGrant(f"purpose must be 'app' or 'admin' (got {purpose!r})")
    if not policy.app_codes:
        raise _disabled("app_codes", "application-elevation codes")
    if mins:
        raise BadGrant("minutes apply to full-admin codes only; leave them out for 'app'")
    return CodeGrant("app", expires_on, sha256=app)


def check_count(value: object) -> int:
    count = _whole(value, "count")
    count = 1 if count is None else count
    if not 1 <= count <= MAX_CODES_PER_CALL:
        raise BadGrant(f"count must be 1 to {MAX_CODES_PER_CALL}")
    return count


# --- the device's offline-key aggregate ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceKeyState:
    key_version: int = 1
    next_counter: int = 0
    last_seq: int = 0  # of ``devicekey.<device id>``: 0 until the first issue or rotation

    def counters(self, count: int) -> range:
        if self.next_counter + count - 1 > MAX_COUNTER:
            left = MAX_COUNTER + 1 - self.next_counter
            raise CountersExhausted(
                f"this device has {left} unused offline code counters left in key version "
                f"{self.key_version}; rotate its key (which also voids its unused codes)"
            )
        return range(self.next_counter, self.next_counter + count)


def evolve_key(state: DeviceKeyState, event: Event, seq: int) -> DeviceKeyState:
    if isinstance(event, DeviceKeyRotated):
        return DeviceKeyState(key_version=event.key_version, next_counter=0, last_seq=seq)
    if isinstance(event, OfflineCodeIssued) and event.key_version == state.key_version:
        nxt = max(state.next_counter, event.counter + 1)
        return DeviceKeyState(state.key_version, nxt, seq)
    if isinstance(event, OfflineCodeIssued | OfflineResponseIssued | OfflineLockoutLifted):
        return replace(state, last_seq=seq)
    return state


def next_key_version(state: DeviceKeyState) -> int:
    return state.key_version + 1
