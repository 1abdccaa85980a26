"""What the agent reports when it cannot do what was asked; each message says what to do."""

from __future__ import annotations


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
