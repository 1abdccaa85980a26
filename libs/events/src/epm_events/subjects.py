"""Every NATS subject EPM uses, built (after validation) and parsed here only."""

from __future__ import annotations

from dataclasses import dataclass

from epm_events.ids import (
    InvalidId,
    validate_device,
    validate_event_name,
    validate_tenant,
    validate_token,
)

EVENTS_PREFIX = "epm.evt"
AGENT_PREFIX = "epm.agent"
DEVICE_PREFIX = "epm.device"
DLQ_PREFIX = "epm.dlq"
RPC_PREFIX = "epm.rpc"
DEVICE_RPC_PREFIX = "epm.devrpc"  # device -> server request/reply, signed; in no stream
NOTICE_PREFIX = "epm.notice"  # service -> service hints on core NATS, in no stream

UNDECIDED_NOTICE = f"{NOTICE_PREFIX}.undecided"
"""approval-svc -> every request-svc replica: no one-time grant and no rule decides this new
request; it waits for a technician (request-svc answers the agent ``open`` at once). A
hint, never the truth: lost, the agent gets ``open`` a little later all the same."""

DECIDING_NOTICE = f"{NOTICE_PREFIX}.deciding"
"""approval-svc -> every request-svc replica, every ``DECIDING_EVERY_SECONDS``: a replica
reacts to new requests. request-svc that heard it before and then nothing for three times
as long answers an agent from its store at once (``open``) instead of waiting for a verdict
nobody is there to give."""
DECIDING_EVERY_SECONDS = 1.0

ALL_EVENTS = f"{EVENTS_PREFIX}.>"
ALL_AGENT = f"{AGENT_PREFIX}.>"
ALL_DEVICE = f"{DEVICE_PREFIX}.>"
ALL_DLQ = f"{DLQ_PREFIX}.>"
ALL_DEVICE_RPC = f"{DEVICE_RPC_PREFIX}.>"


def event_subject(tenant: str, aggregate: str, aggregate_id: str, event_name: str) -> str:
    """``epm.evt.<tenant>.<aggregate>.<aggregate_id>.<EventName>``"""
    return (
        f"{EVENTS_PREFIX}.{validate_tenant(tenant)}.{validate_token(aggregate, 'aggregate')}."
        f"{validate_token(aggregate_id, 'aggregate id')}.{validate_event_name(event_name)}"
    )


def aggregate_filter(tenant: str, aggregate: str, aggregate_id: str) -> str:
    """All events of one aggregate: the subject for expected-last-subject-sequence checks."""
    return (
        f"{EVENTS_PREFIX}.{validate_tenant(tenant)}.{validate_token(aggregate, 'aggregate')}."
        f"{validate_token(aggregate_id, 'aggregate id')}.*"
    )


def event_type_filter(event_name: str) -> str:
    """Every event of one type, in every tenant: ``epm.evt.*.*.*.<EventName>``."""
    return f"{EVENTS_PREFIX}.*.*.*.{validate_event_name(event_name)}"


def tenant_events_filter(tenant: str) -> str:
    return f"{EVENTS_PREFIX}.{validate_tenant(tenant)}.>"


def agent_subject(tenant: str, device: str, event_name: str) -> str:
    return (
        f"{AGENT_PREFIX}.{validate_tenant(tenant, allow_global=False)}."
        f"{validate_device(device)}.{validate_event_name(event_name)}"
    )


def device_subject(tenant: str, device: str, kind: str) -> str:
    return (
        f"{DEVICE_PREFIX}.{validate_tenant(tenant, allow_global=False)}."
        f"{validate_device(device)}.{validate_token(kind, 'kind')}"
    )


def device_filter(tenant: str, device: str) -> str:
    """Everything the server sends one device: what its EPM_DEVICE consumer reads."""
    return (
        f"{DEVICE_PREFIX}.{validate_tenant(tenant, allow_global=False)}.{validate_device(device)}.>"
    )


def device_inbox_prefix(tenant: str, device: str) -> str:
    return f"_INBOX.{validate_tenant(tenant, allow_global=False)}.{validate_device(device)}"


def dlq_subject(service: str) -> str:
    return f"{DLQ_PREFIX}.{validate_token(service, 'service')}"


def rpc_subject(service: str, command: str) -> str:
    return f"{RPC_PREFIX}.{validate_token(service, 'service')}.{validate_token(command, 'command')}"


def rpc_service_filter(service: str) -> str:
    return f"{RPC_PREFIX}.{validate_token(service, 'service')}.*"


def device_rpc_subject(tenant: str, device: str, command: str) -> str:
    """``epm.devrpc.<tenant>.<device>.<command>``: a device's own signed command."""
    return (
        f"{DEVICE_RPC_PREFIX}.{validate_tenant(tenant, allow_global=False)}."
        f"{validate_device(device)}.{validate_token(command, 'command')}"
    )


def device_rpc_filter(command: str) -> str:
    return f"{DEVICE_RPC_PREFIX}.*.*.{validate_token(command, 'command')}"


@dataclass(frozen=True, slots=True)
class DeviceRpcSubject:
    tenant: str
    device: str
    command: str


def parse_device_rpc_subject(subject: str) -> DeviceRpcSubject:
    parts = subject.split(".")
    if len(parts) != 5 or f"{parts[0]}.{parts[1]}" != DEVICE_RPC_PREFIX:
        raise InvalidId(f"not a device command subject: {subject!r}")
    return DeviceRpcSubject(
        validate_tenant(parts[2], allow_global=False), validate_device(parts[3]), parts[4]
    )


@dataclass(frozen=True, slots=True)
class EventSubject:
    tenant: str
    aggregate: str
    aggregate_id: str
    event_name: str


def parse_event_subject(subject: str) -> EventSubject:
    parts = subject.split(".")
    if len(parts) != 6 or f"{parts[0]}.{parts[1]}" != EVENTS_PREFIX:
        raise InvalidId(f"not an event subject: {subject!r}")
    return EventSubject(parts[2], parts[3], parts[4], parts[5])


@dataclass(frozen=True, slots=True)
class AgentSubject:
    tenant: str
    device: str
    event_name: str


def parse_agent_subject(subject: str) -> AgentSubject:
    """Every token validated: a tenant or device id read here may build other subjects."""
    parts = subject.split(".")
    if len(parts) != 5 or f"{parts[0]}.{parts[1]}" != AGENT_PREFIX:
        raise InvalidId(f"not an agent subject: {subject!r}")
    return AgentSubject(
        validate_tenant(parts[2], allow_global=False),
        validate_device(parts[3]),
        validate_event_name(parts[4]),
    )
