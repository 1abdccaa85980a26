"""The JetStream streams, declared once.

``epm streams apply`` (epm_service.streams) turns these specs into stream
configs; services only check that what they need exists.
"""

from __future__ import annotations

from dataclasses import dataclass

from epm_events.codec import MAX_EVENT_BYTES
from epm_events.subjects import ALL_AGENT, ALL_DEVICE, ALL_DLQ, ALL_EVENTS

DAY = 24 * 3600


@dataclass(frozen=True, slots=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    description: str
    max_age_seconds: float = 0  # 0 = keep forever
    max_msg_size: int = MAX_EVENT_BYTES
    duplicate_window_seconds: float = 120
    deny_delete: bool = False
    deny_purge: bool = False
    max_msgs_per_subject: int = -1
    allow_direct: bool = True


EVENTS = StreamSpec(
    name="EPM_EVENTS",
    subjects=(ALL_EVENTS,),
    description="Domain events: the only source of truth. Never deleted or purged.",
    deny_delete=True,
    deny_purge=True,
)

AGENT = StreamSpec(
    name="EPM_AGENT",
    subjects=(ALL_AGENT,),
    description="Untrusted agent ingress; request-svc authenticates it into domain events.",
    max_age_seconds=30 * DAY,
)

DEVICE = StreamSpec(
    name="EPM_DEVICE",
    subjects=(ALL_DEVICE,),
    description="Server -> device: decisions, policy, key rotations, lockout lifts.",
    max_age_seconds=90 * DAY,
)

DLQ = StreamSpec(
    name="EPM_DLQ",
    subjects=(ALL_DLQ,),
    description="Rejected input with the reason in headers (Epm-Dlq-Reason).",
    max_age_seconds=30 * DAY,
    # a rejected message plus its headers may exceed the event limit it broke
    max_msg_size=1024 * 1024,
)

ALL_STREAMS: tuple[StreamSpec, ...] = (EVENTS, AGENT, DEVICE, DLQ)
