"""The CloudEvents 1.0 structured envelope (JSON, NATS binding)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from epm_events.catalog import Event
from epm_events.ids import new_event_id, validate_tenant
from epm_events.subjects import event_subject


class Envelope(BaseModel):
    """``id`` is also the ``Nats-Msg-Id``; ``subject`` is the aggregate id."""

    model_config = ConfigDict(frozen=True, extra="allow")

    specversion: str = "1.0"
    id: str = Field(min_length=1, max_length=128)
    source: str
    type: str = Field(pattern=r"^epm\.[A-Z][A-Za-z0-9]*\.v[0-9]+$")
    subject: str
    time: datetime
    datacontenttype: str = "application/json"
    tenant: str
    data: dict[str, Any]

    @property
    def event_name(self) -> str:
        return self.type.split(".")[1]

    @property
    def version(self) -> int:
        return int(self.type.rsplit(".v", 1)[1])


def service_source(service: str) -> str:
    return f"/epm/{service}"


def agent_source(tenant: str, device: str) -> str:
    return f"/agents/{tenant}/{device}"


def new_envelope(
    event: Event,
    *,
    tenant: str,
    source: str,
    id: str | None = None,
    time: datetime | None = None,
) -> Envelope:
    validate_tenant(tenant)
    return Envelope(
        id=id or new_event_id(),
        source=source,
        type=event.type_name(),
        subject=event.aggregate_id,
        time=time or datetime.now(UTC),
        tenant=tenant,
        data=event.model_dump(mode="json"),
    )


def subject_of(env: Envelope) -> str:
    """The JetStream subject an envelope is published on."""
    aggregate = _aggregate_of(env.event_name)
    return event_subject(env.tenant, aggregate, env.subject, env.event_name)


def _aggregate_of(name: str) -> str:
    from epm_events.catalog import EVENT_TYPES

    return EVENT_TYPES[name].AGGREGATE
