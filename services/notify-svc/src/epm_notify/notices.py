"""Who is told what, and how it reads. Pure.

- RequestCreated in tenant T: every live channel of T and every MSP-wide
  channel, at once, with the request's what and who and a link to it.
- Approved / Denied / RequestExpired: a follow-up to the channels that were
  told of the request. A request a *rule* decided was never open: a creation
  notice not yet tried is withdrawn, and only channels that may have seen it
  get the follow-up.
- Each (event, channel) is one notification whose id,
  ``derived_event_id(event id, channel id)``, receivers dedupe on.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from epm_events.catalog import AppInfo, Approved, Denied, Event, RequestCreated, RequestExpired
from epm_events.envelope import Envelope
from epm_events.ids import derived_event_id

from epm_notify.channels import MSP_WIDE, Kind

FOLLOW_UPS: tuple[type[Event], ...] = (Approved, Denied, RequestExpired)
PUSH_TEXT_LIMIT = 1000  # push services take about 4 KB of payload, encrypted


def notification_id(source_event_id: str, channel_id: str) -> str:
    return derived_event_id(source_event_id, channel_id)


def audience_tenants(tenant: str) -> tuple[str, ...]:
    """The channel owners told of a request of ``tenant``: the tenant and the MSP."""
    return (tenant, MSP_WIDE)


@dataclass(frozen=True, slots=True)
class CreationNotice:
    """A creation notice already planned for one channel, as the follow-up sees it."""

    channel_id: str
    status: str  # pending | sent | failed | cancelled | superseded
    attempts: int


@dataclass(frozen=True, slots=True)
class FollowUpPlan:
    notify: tuple[str, ...]
    withdraw: tuple[str, ...]


def plan_follow_up(decided_by_rule: bool, created: Iterable[CreationNotice]) -> FollowUpPlan:
    notify: list[str] = []
    withdraw: list[str] = []
    for c in created:
        if c.status in ("cancelled", "superseded"):
            continue
        if decided_by_rule and c.status == "pending" and c.attempts == 0:
            withdraw.append(c.channel_id)
        else:
            notify.append(c.channel_id)
    return FollowUpPlan(tuple(notify), tuple(withdraw))


def decided_by_rule(event: Event) -> bool:
    return isinstance(event, Approved | Denied) and event.by.kind == "rule"


# --- what a notice says -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestSummary:
    """What and who of a request, kept for its follow-ups."""

    request_id: str
    tenant: str
    device_id: str
    user: str
    app: AppInfo
    reason: str

    @classmethod
    def of(cls, e: RequestCreated, tenant: str) -> RequestSummary:
        return cls(e.request_id, tenant, e.device_id, e.user, e.app, e.reason)

    def to_json(self) -> str:
        return orjson.dumps(
            {
                "request_id": self.request_id,
                "tenant": self.tenant,
                "device_id": self.device_id,
                "user": self.user,
                "app": self.app.model_dump(mode="json"),
                "reason": self.reason,
            }
        ).decode()

    @classmethod
    def from_json(cls, raw: str | bytes) -> RequestSummary:
        d = orjson.loads(raw)
        return cls(
            d["request_id"],
            d["tenant"],
            d["device_id"],
            d["user"],
            AppInfo.model_validate(d["app"]),
            d["reason"],
        )

    @property
    def what(self) -> str:
        name = self.app.app_name or self.app.file_name
        publisher = f" by {self.app.publisher}" if self.app.publisher else ""
        return f"{name}{publisher}"

    @property
    def who(self) -> str:
        return f"{self.user} on {self.device_id} ({self.tenant})"


@dataclass(frozen=True, slots=True)
class Notice:
    title: str
    text: str
    link: str
    request_id: str


def console_link(public_url: str, request_id: str) -> str:
    return f"{public_url.rstrip('/')}/#/requests/{request_id}"


def notice_of(event: Event, request: RequestSummary, public_url: str) -> Notice:
    link = console_link(public_url, request.request_id)
    app = request.app
    facts = (
        f"File: {app.file_name}\nSHA-256: {app.sha256}\n"
        f"Publisher: {app.publisher or '-'}\nPath: {app.path or '-'}\n"
        f"User: {request.user}\nDevice: {request.device_id}\nTenant: {request.tenant}"
    )
    if isinstance(event, RequestCreated):
        title = f"Elevation request: {request.what} for {request.who}"
        reason = f"Reason: {request.reason}\n" if request.reason else ""
        text = f"{request.who} asks to run {request.what} elevated.\n{reason}{facts}"
    elif isinstance(event, Approved | Denied):
        verdict = "Approved" if isinstance(event, Approved) else "Denied"
        by = f"rule {event.rule_id}" if event.by.kind == "rule" else event.by.id
        title = f"{verdict}: {request.what} for {request.who}"
        why = f" Reason: {event.reason}" if event.reason else ""
        text = f"{verdict} by {by} (scope {event.scope}).{why}\n{facts}"
    elif isinstance(event, RequestExpired):
        title = f"Expired: {request.what} for {request.who}"
        text = f"Nobody decided in time; the request expired.\n{facts}"
    else:  # pragma: no cover - the store only asks for the events above
        raise TypeError(f"no notice for {event.NAME}")
    return Notice(title, f"{text}\n\nOpen it: {link}", link, request.request_id)


def render(kind: Kind, source: Envelope, notice: Notice) -> bytes:
    """The payload one channel kind gets; stored with the delivery so retries send the same."""
    if kind == "webhook":
        # The body is the CloudEvent as it is in the stream, with two extension attributes.
        body: dict[str, Any] = source.model_dump(mode="json")
        body["link"] = notice.link
        body["summary"] = notice.title
        return orjson.dumps(body)
    if kind == "email":
        return orjson.dumps({"subject": notice.title, "text": notice.text})
    return orjson.dumps(
        {
            "title": notice.title,
            "body": notice.text[:PUSH_TEXT_LIMIT],
            "url": notice.link,
            "tag": notice.request_id,
        }
    )
