"""The codec: envelope round trip, upcasting and every refusal with its reason."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from epm_events.catalog import Approved, TenantCreated
from epm_events.codec import MAX_EVENT_BYTES, DecodeError, decode, decode_event, encode
from epm_events.envelope import Envelope, new_envelope, service_source, subject_of
from epm_events.upcasters import tenant_created_v1_to_v2, upcast

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def tenant_created() -> TenantCreated:
    return TenantCreated(tenant_id="acme", name="Acme Corp", created_by="msp-admin")


def raw_envelope(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "specversion": "1.0",
        "id": "evt-1",
        "source": "/epm/gateway",
        "type": "epm.TenantCreated.v2",
        "subject": "acme",
        "time": NOW.isoformat(),
        "tenant": "acme",
        "data": {"tenant_id": "acme", "name": "Acme Corp", "created_by": "msp-admin"},
    }
    raw.update(overrides)
    return raw


def payload(**overrides: Any) -> bytes:
    return orjson.dumps(raw_envelope(**overrides))


def refusal(data: bytes) -> DecodeError:
    with pytest.raises(DecodeError) as err:
        decode_event(data)
    return err.value


def test_envelope_round_trips_through_the_codec() -> None:
    env = new_envelope(tenant_created(), tenant="acme", source=service_source("gateway"), time=NOW)
    back, event = decode_event(encode(env))
    assert back == env
    assert event == tenant_created()
    assert back.id
    assert back.type == "epm.TenantCreated.v2"
    assert (back.event_name, back.version) == ("TenantCreated", 2)
    assert back.subject == "acme"
    assert back.tenant == "acme"
    assert back.specversion == "1.0"


def test_type_is_epm_name_and_version() -> None:
    event = Approved(request_id="req-1", scope="once", by={"kind": "technician", "id": "tech-1"})
    env = new_envelope(event, tenant="acme", source="/epm/approval")
    assert env.type == "epm.Approved.v1"
    assert subject_of(env) == "epm.evt.acme.request.req-1.Approved"


def test_each_envelope_gets_its_own_id_unless_one_is_given() -> None:
    a = new_envelope(tenant_created(), tenant="acme", source="/epm/gateway")
    b = new_envelope(tenant_created(), tenant="acme", source="/epm/gateway")
    c = new_envelope(tenant_created(), tenant="acme", source="/epm/gateway", id="fixed")
    assert a.id != b.id
    assert c.id == "fixed"


def test_malformed_json_is_refused() -> None:
    err = refusal(b"{not json")
    assert err.reason == "malformed"
    assert "not valid JSON" in err.detail


def test_json_that_is_not_an_object_is_refused() -> None:
    err = refusal(b"[1, 2, 3]")
    assert err.reason == "malformed"
    assert "JSON object" in err.detail


def test_wrong_specversion_is_refused() -> None:
    err = refusal(payload(specversion="0.3"))
    assert err.reason == "malformed"
    assert "specversion" in err.detail


def test_invalid_envelope_is_refused_naming_the_field() -> None:
    raw = raw_envelope()
    del raw["source"]
    err = refusal(orjson.dumps(raw))
    assert err.reason == "invalid_envelope"
    assert "source" in err.detail
    assert refusal(payload(type="TenantCreated")).reason == "invalid_envelope"


def test_unknown_event_type_is_refused() -> None:
    err = refusal(payload(type="epm.NoSuchThing.v1"))
    assert err.reason == "unknown_type"
    assert "epm.NoSuchThing.v1" in err.detail


def test_newer_version_than_this_code_knows_is_refused_with_upgrade_advice() -> None:
    err = refusal(payload(type="epm.TenantCreated.v3"))
    assert err.reason == "unsupported_version"
    assert "upgrade" in err.detail


def test_invalid_data_is_refused_naming_the_field() -> None:
    err = refusal(payload(data={"tenant_id": "acme", "name": "", "created_by": "x"}))
    assert err.reason == "invalid_data"
    assert "name" in err.detail
    extra = refusal(
        payload(data={"tenant_id": "acme", "name": "A", "created_by": "x", "surprise": 1})
    )
    assert extra.reason == "invalid_data"


def test_oversized_event_is_refused_before_parsing() -> None:
    big = payload(data={"tenant_id": "acme", "name": "x" * MAX_EVENT_BYTES, "created_by": "x"})
    err = refusal(big)
    assert err.reason == "oversized"
    assert str(MAX_EVENT_BYTES) in err.detail


def test_decode_checks_the_envelope_only() -> None:
    env = decode(payload(data={"anything": "goes"}))
    assert isinstance(env, Envelope)
    assert env.data == {"anything": "goes"}


def test_tenant_created_v1_is_upcast_to_v2_when_decoded() -> None:
    v1 = payload(type="epm.TenantCreated.v1", data={"tenant_id": "acme", "display_name": "Acme"})
    env, event = decode_event(v1)
    assert env.version == 1
    assert event == TenantCreated(tenant_id="acme", name="Acme", created_by="unknown")


def test_tenant_created_upcaster_renames_display_name_and_keeps_the_rest() -> None:
    assert tenant_created_v1_to_v2({"tenant_id": "acme", "display_name": "Acme"}) == {
        "tenant_id": "acme",
        "name": "Acme",
        "created_by": "unknown",
    }
    assert upcast("TenantCreated", 2, 2, {"x": 1}) == {"x": 1}


def test_v1_event_that_does_not_fit_its_old_schema_is_invalid_data() -> None:
    err = refusal(payload(type="epm.TenantCreated.v1", data={"tenant_id": "acme"}))
    assert err.reason == "invalid_data"
    assert "v1" in err.detail
