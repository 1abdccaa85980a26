"""Enrollment: trade a one-time enrollment token and the device's public key for an identity.

``POST {url}/v1/agent/enroll`` with ``{"enrollment_token", "public_key", "hostname"}``;
201 carries the enrollment answer (docs/internal-contracts.md), an error is
RFC 9457 problem+json whose ``detail`` says what went wrong (used, expired,
unknown token) and is shown to the person as it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from epm_events.ids import validate_device, validate_tenant
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from epm_agent.errors import AgentError, ServerUnreachable

if TYPE_CHECKING:
    import httpx

ENROLL_PATH = "/v1/agent/enroll"


class EnrollmentRefused(AgentError):
    """The server said no (4xx/5xx); ``status`` is the HTTP status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class NatsAccess(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    url: str
    user: str | None = None
    password: str | None = None
    creds: str | None = None
    ca: str | None = None  # PEM: the CA to trust for NATS, when the operator hands one out


class EnrollmentAnswer(BaseModel):
    """What the server gives a newly enrolled device (more fields are tolerated)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    device_id: str
    tenant: str
    nats: NatsAccess
    inbox_prefix: str
    subjects: dict[str, Any] = {}
    policy: dict[str, Any] = {}
    key_material: Any = None

    @field_validator("device_id")
    @classmethod
    def _device(cls, v: str) -> str:
        return validate_device(v)

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, v: str) -> str:
        return validate_tenant(v, allow_global=False)


async def request_enrollment(
    url: str,
    enrollment_token: str,
    public_key_b64: str,
    hostname: str,
    *,
    encryption_key_b64: str | None = None,
    timeout: float = 15.0,
) -> EnrollmentAnswer:
    import httpx  # only enrollment speaks HTTP; keep it off every other command's start-up

    endpoint = url.rstrip("/") + ENROLL_PATH
    body = {
        "enrollment_token": enrollment_token,
        "public_key": public_key_b64,
        "hostname": hostname,
    }
    if encryption_key_b64 is not None:
        body["encryption_key"] = encryption_key_b64
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            response = await client.post(endpoint, json=body)
    except httpx.HTTPError as exc:
        raise ServerUnreachable(
            f"cannot reach the EPM server at {url} ({type(exc).__name__}: {exc}); "
            "check --url and that the server is running"
        ) from None
    if response.status_code >= 400:
        raise EnrollmentRefused(_problem_message(response), response.status_code)
    try:
        return EnrollmentAnswer.model_validate_json(response.content)
    except ValidationError as exc:
        raise AgentError(
            f"the server at {url} answered enrollment with something this agent does not "
            f"understand ({exc.error_count()} problem(s), first: {exc.errors()[0]['msg']}); "
            "check that --url points at an EPM server of a matching version"
        ) from None


def _problem_message(response: httpx.Response) -> str:
    prefix = f"enrollment refused ({response.status_code})"
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if isinstance(problem, dict):
        text = problem.get("detail") or problem.get("title")
        if isinstance(text, str) and text:
            return f"{prefix}: {text}"
    if response.status_code == 404:
        return f"{prefix}: {response.url} does not exist; check that --url is the EPM server"
    return f"{prefix}: {response.reason_phrase or 'no reason given'}"
