"""Subjects are built after validation and parsed back to their parts."""

from __future__ import annotations

import pytest
from epm_events.ids import InvalidId
from epm_events.subjects import (
    agent_subject,
    aggregate_filter,
    device_inbox_prefix,
    device_subject,
    dlq_subject,
    event_subject,
    parse_agent_subject,
    parse_event_subject,
    rpc_subject,
    tenant_events_filter,
)


def test_event_subject_has_tenant_aggregate_id_and_event_name() -> None:
    subject = event_subject("acme", "request", "req-1", "Approved")
    assert subject == "epm.evt.acme.request.req-1.Approved"


def test_aggregate_filter_matches_every_event_of_one_aggregate() -> None:
    assert aggregate_filter("acme", "request", "req-1") == "epm.evt.acme.request.req-1.*"
    assert tenant_events_filter("acme") == "epm.evt.acme.>"


@pytest.mark.parametrize(
    ("tenant", "aggregate", "aggregate_id", "name"),
    [
        ("acme.evil", "request", "req-1", "Approved"),
        ("*", "request", "req-1", "Approved"),
        ("acme", "request", ">", "Approved"),
        ("acme", "request", "req.1", "Approved"),
        ("acme", "req uest", "req-1", "Approved"),
        ("acme", "request", "req-1", "approved"),
        ("acme", "request", "req-1", "Approved.x"),
    ],
)
def test_event_subject_refuses_unsafe_parts_before_building(
    tenant: str, aggregate: str, aggregate_id: str, name: str
) -> None:
    with pytest.raises(InvalidId):
        event_subject(tenant, aggregate, aggregate_id, name)


def test_agent_and_device_subjects_refuse_the_global_tenant() -> None:
    with pytest.raises(InvalidId):
        agent_subject("_global", "pc-1", "ElevationPerformed")
    with pytest.raises(InvalidId):
        device_subject("_global", "pc-1", "decision")
    with pytest.raises(InvalidId):
        device_inbox_prefix("_global", "pc-1")


def test_agent_device_dlq_and_rpc_subjects() -> None:
    assert agent_subject("acme", "pc-1", "RequestCreated") == "epm.agent.acme.pc-1.RequestCreated"
    assert device_subject("acme", "pc-1", "decision") == "epm.device.acme.pc-1.decision"
    assert device_inbox_prefix("acme", "pc-1") == "_INBOX.acme.pc-1"
    assert dlq_subject("request-svc") == "epm.dlq.request-svc"
    assert rpc_subject("approval", "decide") == "epm.rpc.approval.decide"
    with pytest.raises(InvalidId):
        agent_subject("acme", "pc>", "RequestCreated")
    with pytest.raises(InvalidId):
        rpc_subject("approval", "de.cide")


def test_parse_event_subject_returns_its_parts() -> None:
    parsed = parse_event_subject(event_subject("acme", "request", "req-1", "Denied"))
    assert (parsed.tenant, parsed.aggregate, parsed.aggregate_id, parsed.event_name) == (
        "acme",
        "request",
        "req-1",
        "Denied",
    )


@pytest.mark.parametrize(
    "subject",
    ["epm.evt.acme.request.req-1", "epm.agent.acme.pc-1.x.y.z", "foo.evt.a.b.c.D", "epm.evt"],
)
def test_parse_event_subject_refuses_what_is_not_an_event_subject(subject: str) -> None:
    with pytest.raises(InvalidId, match="not an event subject"):
        parse_event_subject(subject)


def test_parse_agent_subject_returns_its_parts() -> None:
    parsed = parse_agent_subject("epm.agent.acme.pc-1.ElevationPerformed")
    assert (parsed.tenant, parsed.device, parsed.event_name) == (
        "acme",
        "pc-1",
        "ElevationPerformed",
    )
    with pytest.raises(InvalidId, match="not an agent subject"):
        parse_agent_subject("epm.evt.acme.request.req-1.Approved")
