"""What the agent reports when it cannot do what was asked; each message says what to do."""

from __future__ import annotations

from nats.errors import AuthorizationError


class AgentError(Exception):
    """A refusal or failure a person can act on (printed as ``{"error": ...}`` with --json)."""


class NotEnrolled(AgentError):
    def __init__(self, state_dir: object) -> None:
        super().__init__(
            f"this agent is not enrolled (no identity in {state_dir}); run "
            "'epm-agent enroll --url URL --enrollment-token TOKEN' first, or pass the "
            "--state-dir of an enrolled agent"
        )


class ServerUnreachable(AgentError):
    """NATS (or the HTTP edge) did not answer: the agent is offline."""


class NotImplementedYet(AgentError):
    """A sub-command that belongs to a later release of the agent."""


class CredentialsRefused(AgentError):
    """The NATS server refused this device's credentials (not: could not be reached).

    Usually the device was revoked (``epm device revoke``): the server then refuses its
    NATS user for good, and only a new enrollment, in a new state dir, gets a working one."""

    def __init__(self, nats_url: str, state_dir: object, detail: str) -> None:
        super().__init__(
            f"this device's NATS credentials were refused by {nats_url} ({detail}): it was "
            "probably revoked; enroll it again with a new enrollment token "
            "(epm-agent enroll --url URL --enrollment-token TOKEN --state-dir <new dir>; "
            f"{state_dir} stays as it is, for the record). Offline codes are no way around "
            "it: a revoked device gets none"
        )


AUTH_REFUSALS = (
    "authorization violation",
    "authentication revoked",
    "authentication expired",
    "account authentication expired",
)
"""What nats-server says (``-ERR '...'``) when it refuses a client's credentials."""


def is_auth_refusal(exc: BaseException) -> bool:
    """True when a NATS error says the credentials were refused, rather than unreachable."""
    if isinstance(exc, AuthorizationError):
        return True
    text = str(exc).lower()
    return any(marker in text for marker in AUTH_REFUSALS)
