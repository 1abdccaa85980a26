"""The agent's clock: real UTC time, or ``EPM_AGENT_NOW`` in tests.

Offline codes depend on the clock (access-code expiry, retry delays, lockout
cool-offs, the end of a full-admin session), and tests must cross those lines
without waiting. ``EPM_AGENT_NOW`` (RFC 3339, e.g. ``2030-01-02T03:04:05Z``)
fixes the reference agent's clock for one command. It exists for tests only:
an agent that runs as a service (as a production agent must) does not take its
environment from the user, and nothing else reads it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime

from epm_agent.errors import AgentError

NOW_ENV = "EPM_AGENT_NOW"

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


def clock_from_env(environ: dict[str, str] | None = None) -> Clock:
    """``EPM_AGENT_NOW`` as a fixed clock when set, else the system clock."""
    value = (os.environ if environ is None else environ).get(NOW_ENV)
    if not value:
        return system_clock
    fixed = parse_time(value, NOW_ENV)
    return lambda: fixed


def parse_time(value: str, what: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise AgentError(f"{what}={value!r} is not a time like 2030-01-02T03:04:05Z") from None
    if parsed.tzinfo is None:
        raise AgentError(f"{what}={value!r} needs a time zone, e.g. 2030-01-02T03:04:05Z")
    return parsed.astimezone(UTC)


def iso(moment: datetime) -> str:
    """How the agent writes a time: UTC, milliseconds, ``Z``."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
