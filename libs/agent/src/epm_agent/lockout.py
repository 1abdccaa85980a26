"""Wrong offline codes: retry delays, then a device-wide lockout. Pure: no I/O, no clock.

The schedule (epm_domain.offline_codes): after a wrong entry the next try waits
``delay_after(failures)`` seconds (2, 4, ...); the ``MAX_TRIES``-th wrong entry
in a row locks the whole device for ``lockout_after(lockouts)`` (5 minutes,
doubling with each lockout, at most a day). Wrong response codes and wrong
access codes count alike, so an attacker gets ``MAX_TRIES`` guesses per
lockout, whatever they type. A good code resets the failures and the doubling
(only a real code gets there); a lift from the server ends the lockout in force
but keeps the doubling. The state lives in the state dir, so restarting the
agent (or the computer) changes nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from epm_domain.offline_codes import MAX_TRIES, delay_after, lockout_after


@dataclass(frozen=True, slots=True)
class Lockout:
    failures: int = 0  # wrong entries in a row since the last lockout or good code
    last_failure_at: datetime | None = None
    locked_until: datetime | None = None
    lockouts: int = 0  # lockouts since the last good code: the cool-off doubles with each
    cooloff_seconds: float = 0.0  # length of the last lockout

    def locked(self, now: datetime) -> bool:
        return self.locked_until is not None and now < self.locked_until

    def tries_left(self) -> int:
        return MAX_TRIES - self.failures


@dataclass(frozen=True, slots=True)
class Wait:
    """Why a code may not be tried now, and for how long."""

    seconds: int
    until: datetime
    locked: bool  # True: the device is locked out; False: a retry delay

    @property
    def message(self) -> str:
        if self.locked:
            return (
                f"too many wrong codes: offline codes are locked on this computer until "
                f"{self.until.isoformat(timespec='seconds')} ({_duration(self.seconds)} from "
                "now); try again then, or ask the help desk to lift the lockout"
            )
        return f"wait {self.seconds} seconds before the next try (a wrong code was entered)"


def may_try(state: Lockout, now: datetime) -> Wait | None:
    """None if a code may be tried now."""
    if state.locked_until is not None and now < state.locked_until:
        return Wait(_seconds(state.locked_until - now), state.locked_until, locked=True)
    if state.failures and state.last_failure_at is not None:
        ready = state.last_failure_at + timedelta(seconds=delay_after(state.failures))
        if now < ready:
            return Wait(_seconds(ready - now), ready, locked=False)
    return None


def after_failure(state: Lockout, now: datetime) -> Lockout:
    """One wrong code: count it; the ``MAX_TRIES``-th in a row locks the device."""
    failures = state.failures + 1
    if failures < MAX_TRIES:
        return replace(state, failures=failures, last_failure_at=now)
    cooloff = lockout_after(state.lockouts)
    return Lockout(
        failures=0,
        last_failure_at=now,
        locked_until=now + timedelta(seconds=cooloff),
        lockouts=state.lockouts + 1,
        cooloff_seconds=cooloff,
    )


def after_success(state: Lockout) -> Lockout:
    return Lockout()


def after_lift(state: Lockout) -> Lockout:
    """The server lifted the lockout: try again at once; later lockouts still double."""
    return replace(state, failures=0, last_failure_at=None, locked_until=None)


def _seconds(delta: timedelta) -> int:
    return max(1, math.ceil(delta.total_seconds()))


def _duration(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} seconds"
    if seconds < 7200:
        return f"{math.ceil(seconds / 60)} minutes"
    return f"{seconds / 3600:.1f} hours"
