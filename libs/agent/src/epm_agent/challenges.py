"""Challenge-response on the agent: which request codes wait for an answer, and which
grants a response code may carry for them. Pure: no I/O, no clock.

A challenge is what the user asked when the computer showed a request code:
one application (by SHA-256) or full admin for N minutes. The agent knows it,
so it recomputes the response code for each grant the help desk may have chosen
and compares in constant time (epm_domain.offline_codes.verify_response):

- an application: its SHA-256; ``"*"`` (any application) too only when the
  policy has ``response_any_app``;
- full admin for N minutes: N, or one of the shorter standard durations
  (the help desk may grant less than asked), never more than the policy's
  ``max_admin_minutes``.

So a guess is checked against at most ``MAX_PENDING`` challenges times nine
grants: the odds of a guessed 60-bit code stay below 2^-54 per try.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from epm_domain.offline_codes import ADMIN_MINUTES, ResponseGrant, verify_response
from epm_domain.sealed import DeviceKeys

CHALLENGE_TTL = timedelta(hours=24)
"""A request code waits this long for the help desk's answer."""

MAX_PENDING = 5
"""Request codes waiting at once; a newer one retires the oldest."""

ChallengeState = Literal["pending", "used", "spent", "expired", "retired"]


@dataclass(frozen=True, slots=True)
class Challenge:
    request_code: str
    grant: Literal["app", "admin"]
    created_at: datetime
    user: str
    sha256: str | None = None  # app
    app: Mapping[str, Any] | None = None  # app: AppInfo fields, for ElevationPerformed
    minutes: int = 0  # admin
    state: ChallengeState = "pending"
    failures: int = 0

    def open_at(self, now: datetime) -> bool:
        return self.state == "pending" and now < self.created_at + CHALLENGE_TTL


@dataclass(frozen=True, slots=True)
class Match:
    challenge: Challenge
    grant: ResponseGrant


def candidate_grants(challenge: Challenge, policy: Mapping[str, Any]) -> list[ResponseGrant]:
    if challenge.grant == "app":
        grants = [ResponseGrant("app", sha256=challenge.sha256)]
        if policy.get("response_any_app", False):
            grants.append(ResponseGrant("app", sha256=None))
        return grants
    most = min(challenge.minutes, max_admin_minutes(policy))
    shorter = sorted((m for m in ADMIN_MINUTES if m < most), reverse=True)
    return [ResponseGrant("admin", minutes=m) for m in [most, *shorter] if m >= 1]


def find_match(
    keys: DeviceKeys, challenges: Iterable[Challenge], policy: Mapping[str, Any], entered: str
) -> Match | None:
    """The challenge and grant ``entered`` answers, if any."""
    for challenge in challenges:
        for grant in candidate_grants(challenge, policy):
            if verify_response(
                keys.response,
                keys.device_id,
                challenge.request_code,
                grant,
                keys.key_version,
                entered,
            ):
                return Match(challenge, grant)
    return None


def max_admin_minutes(policy: Mapping[str, Any]) -> int:
    value = policy.get("max_admin_minutes", 60)
    return value if isinstance(value, int) and not isinstance(value, bool) else 60
