"""Response codes, offline access codes, rotation and self-generation, issued by approval-svc on
a real nats-server and checked the way the agent checks them (epm_domain, offline)."""

from __future__ import annotations

import asyncio
import base64
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import nats.js.errors
import orjson
import pytest
from epm_approval.app import DEFINITION as APPROVAL
from epm_domain.offline_codes import (
    CodeError,
    ResponseGrant,
    access_code_hash,
    code_hash,
    verify_access_code,
    verify_response,
)
from epm_domain.sealed import open_sealed, reply_context
from epm_events.agent import SIGNATURE_HEADER, signing_bytes
from epm_events.codec import decode
from epm_events.streams import EVENTS
from epm_events.subjects import device_inbox_prefix, device_rpc_subject
from epm_service.bus import Bus
from epm_service.principal import Principal
from epm_service.rpc import call
from epm_service.runtime import RunningService, start_service
from epm_service.secretbox import SecretBox
from epm_service.settings import Settings

from tests.integration.test_offline_policy import (
    ACME_ADMIN,
    ACME_TECH,
    GLOBEX_TECH,
    MSP_ADMIN,
    Device,
    ask,
    enroll,
    offline_settings,
    refused,
    services,
    wait_device_messages,
)
from tests.integration.test_request_svc import eventually

__all__ = ["offline_settings", "services"]  # fixtures

SHA = "ab" * 32
MSP_TECH = Principal("tok-7", "mo", "msp_technician", None)


def today() -> Any:
    return datetime.now(UTC).date()


async def codes(bus: Bus, device: Device, principal: Principal = ACME_TECH, **args: Any) -> Any:
    args.setdefault("purpose", "app")
    return await ask(
        bus, "offline_codes", principal, tenant=device.tenant, device_id=device.device_id, **args
    )


async def respond(bus: Bus, device: Device, principal: Principal = ACME_TECH, **args: Any) -> Any:
    return await ask(
        bus, "offline_response", principal, tenant=device.tenant, device_id=device.device_id, **args
    )


async def raw_events(bus: Bus) -> list[tuple[str, bytes]]:
    info = await bus.js.stream_info(EVENTS.name)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await bus.js.get_msg(EVENTS.name, seq)
        out.append((msg.subject, msg.data or b""))
    return out


async def events_named(bus: Bus, name: str) -> list[dict[str, Any]]:
    return [
        decode(data).data for subject, data in await raw_events(bus) if subject.endswith(f".{name}")
    ]


# --- challenge-response -------------------------------------------------------------------


async def test_a_response_code_verifies_on_the_device_for_that_request_and_grant_only(
    bus: Bus, services: Any
) -> None:
    device = await enroll(bus)
    keys = device.keys()
    answer = await respond(bus, device, request_code="123456", grant="app", sha256=SHA)
    code = answer["response_code"]
    assert len(code) == 14 and code[4] == code[9] == "-"
    grant = ResponseGrant("app", sha256=SHA)
    assert verify_response(keys.response, device.device_id, "123456", grant, 1, code)
    assert verify_response(keys.response, device.device_id, "123456", grant, 1, code.lower())
    assert not verify_response(keys.response, device.device_id, "654321", grant, 1, code)
    admin = ResponseGrant("admin", minutes=30)
    assert not verify_response(keys.response, device.device_id, "123456", admin, 1, code)

    answer = await respond(bus, device, MSP_TECH, request_code="222333", grant="admin", minutes=30)
    assert verify_response(
        keys.response, device.device_id, "222333", admin, 1, answer["response_code"]
    )

    issued = await events_named(bus, "OfflineResponseIssued")
    assert [(e["grant"], e["issued_by"]) for e in issued] == [
        ("app", "tenant_technician:alice"),
        ("admin", "msp_technician:mo"),
    ]
    flat = orjson.dumps(issued).decode()
    assert "123456" not in flat and "222333" not in flat and code not in flat


async def test_responses_outside_the_policy_are_refused_with_the_switch_to_change(
    bus: Bus, services: Any
) -> None:
    device = await enroll(bus)
    err = await refused(
        bus,
        "offline_response",
        ACME_TECH,
        tenant="acme",
        device_id=device.device_id,
        request_code="123456",
        grant="admin",
        minutes=90,
    )
    assert err.status == 403 and "max_admin_minutes" in err.detail
    args = {"tenant": "acme", "device_id": device.device_id, "request_code": "123456"}
    err = await refused(bus, "offline_response", ACME_TECH, **args, grant="app")
    assert err.status == 403 and "SHA-256" in err.detail  # "*" needs response_any_app
    err = await refused(
        bus, "offline_response", ACME_TECH, **args | {"request_code": "12a"}, grant="app"
    )
    assert err.status == 422

    await ask(bus, "set_policy", ACME_ADMIN, tenant="acme", policy={"response_any_app": True})
    anything = await respond(bus, device, request_code="123456", grant="app")
    assert verify_response(
        device.keys().response,
        device.device_id,
        "123456",
        ResponseGrant("app"),
        1,
        anything["response_code"],
    )
    await ask(bus, "set_policy", ACME_ADMIN, tenant="acme", policy={"challenge_response": False})
    err = await refused(bus, "offline_response", ACME_TECH, **args, grant="app", sha256=SHA)
    assert err.status == 403 and "disabled" in err.detail


# --- offline access codes -------------------------------------------------------------------


async def test_issued_codes_verify_on_the_device_and_only_their_hashes_are_recorded(
    bus: Bus, services: Any
) -> None:
    device = await enroll(bus)
    keys = device.keys()
    issued = (await codes(bus, device, count=3, sha256=SHA))["codes"]
    counters = []
    for c in issued:
        grant = verify_access_code(
            keys.access_code, device.device_id, c["code"], 1, today(), sha256=SHA
        )
        assert grant.purpose == "app" and grant.pinned_sha256 == SHA
        counters.append(grant.counter)
        assert datetime.fromisoformat(c["expires_at"]) > datetime.now(UTC) + timedelta(days=6)
    assert counters == [0, 1, 2]
    with pytest.raises(CodeError):  # pinned: another application does not open it
        verify_access_code(
            keys.access_code, device.device_id, issued[0]["code"], 1, today(), sha256="cd" * 32
        )

    recorded = await events_named(bus, "OfflineCodeIssued")
    assert [e["code_hash"] for e in recorded] == [
        access_code_hash(c["code"], keys.access_code) for c in issued
    ]
    # keyed: who reads the event cannot test guesses of an unused code against it
    assert all(
        e["code_hash"] != code_hash(c["code"]) for e, c in zip(recorded, issued, strict=True)
    )
    assert all(e["issued_by"] == "tenant_technician:alice" for e in recorded)
    assert not any(e["self_generated"] for e in recorded)
    flat = b"".join(data for _, data in await raw_events(bus)).decode()
    for c in issued:
        assert c["code"] not in flat and c["code"].replace("-", "") not in flat


async def test_admin_codes_follow_the_policy(bus: Bus, services: Any) -> None:
    device = await enroll(bus)
    err = await refused(
        bus,
        "offline_codes",
        ACME_TECH,
        tenant="acme",
        device_id=device.device_id,
        purpose="admin",
        minutes=30,
    )
    assert err.status == 403 and "admin_codes" in err.detail
    await ask(bus, "set_policy", ACME_ADMIN, tenant="acme", policy={"admin_codes": True})
    base = {"tenant": "acme", "device_id": device.device_id, "purpose": "admin"}
    err = await refused(bus, "offline_codes", ACME_TECH, **base, minutes=120)
    assert err.status == 403 and "max_admin_minutes" in err.detail
    err = await refused(bus, "offline_codes", ACME_TECH, **base, minutes=45)
    assert err.status == 422 and "15, 30, 60" in err.detail
    err = await refused(bus, "offline_codes", ACME_TECH, **base, minutes=30, count=51)
    assert err.status == 422
    [code] = (await codes(bus, device, purpose="admin", minutes=30))["codes"]
    grant = verify_access_code(
        device.keys().access_code, device.device_id, code["code"], 1, today()
    )
    assert (grant.purpose, grant.minutes) == ("admin", 30)
    await ask(bus, "set_policy", ACME_ADMIN, tenant="acme", policy={"app_codes": False})
    err = await refused(bus, "offline_codes", ACME_TECH, **base | {"purpose": "app"})
    assert err.status == 403 and "app_codes" in err.detail


async def test_concurrent_issuers_never_share_a_counter(bus: Bus, services: Any) -> None:
    device = await enroll(bus)
    answers = await asyncio.gather(*(codes(bus, device, count=4) for _ in range(5)))
    keys = device.keys()
    counters = [
        verify_access_code(keys.access_code, device.device_id, c["code"], 1, today()).counter
        for a in answers
        for c in a["codes"]
    ]
    assert sorted(counters) == list(range(20))
    recorded = await events_named(bus, "OfflineCodeIssued")
    assert sorted(e["counter"] for e in recorded) == list(range(20))


async def test_another_tenants_device_is_not_found_and_unknown_or_revoked_devices_say_so(
    bus: Bus, services: Any
) -> None:
    device = await enroll(bus)
    args = {"device_id": device.device_id, "purpose": "app"}
    assert (await refused(bus, "offline_codes", GLOBEX_TECH, tenant="acme", **args)).status == 404
    err = await refused(bus, "offline_codes", GLOBEX_TECH, tenant="globex", **args)
    assert err.status == 404 and "not found in tenant 'globex'" in err.detail
    err = await refused(bus, "offline_codes", ACME_TECH, tenant="acme", device_id="d-nope")
    assert err.status == 404
    await call(
        bus.nc,
        "request-svc",
        "revoke_device",
        {"tenant": "acme", "device_id": device.device_id},
        MSP_ADMIN,
    )

    async def revoked() -> bool:
        try:
            await codes(bus, device)
        except Exception as exc:
            return "revoked" in str(exc)
        return False

    assert await eventually(revoked)


# --- rotation -------------------------------------------------------------------------------


async def test_rotation_sends_new_key_material_and_old_codes_stop_working(
    bus: Bus, services: Any
) -> None:
    device = await enroll(bus)
    [old] = (await codes(bus, device))["codes"]
    assert (
        await refused(
            bus, "rotate_device_key", ACME_TECH, tenant="acme", device_id=device.device_id
        )
    ).status == 403
    rotated = await ask(
        bus, "rotate_device_key", ACME_ADMIN, tenant="acme", device_id=device.device_id
    )
    assert rotated["key_version"] == 2
    [update] = await wait_device_messages(bus, device, "key", 1)
    keys = device.keys(update)
    assert keys.key_version == 2 and keys.access_code != device.keys().access_code
    with pytest.raises(CodeError):
        verify_access_code(keys.access_code, device.device_id, old["code"], 2, today())
    [new] = (await codes(bus, device))["codes"]
    assert new["key_version"] == 2
    assert (
        verify_access_code(keys.access_code, device.device_id, new["code"], 2, today()).counter == 0
    )

    voided = await ask(
        bus, "revoke_device_codes", MSP_TECH, tenant="acme", device_id=device.device_id
    )
    assert voided["key_version"] == 3
    updates = await wait_device_messages(bus, device, "key", 2)
    assert (updates[-1]["key_version"], updates[-1]["reason"]) == (3, "codes revoked")
    v3 = device.keys(updates[-1])
    with pytest.raises(CodeError):
        verify_access_code(v3.access_code, device.device_id, new["code"], 3, today())


# --- self-generation over a signed device command --------------------------------------------


async def self_generate(
    bus: Bus, device: Device, *, sign: bool = True, issued_at: datetime | None = None, **body: Any
) -> tuple[str, dict[str, Any]]:
    subject = device_rpc_subject(device.tenant, device.device_id, "self_generate_code")
    msg_id = str(uuid.uuid4())
    payload = orjson.dumps({**body, "issued_at": (issued_at or datetime.now(UTC)).isoformat()})
    signature = device.signing_key.sign(signing_bytes(subject, msg_id, payload))
    headers = {"Nats-Msg-Id": msg_id}
    if sign:
        headers[SIGNATURE_HEADER] = base64.b64encode(signature).decode()
    # answered only under the device's own inbox, as an agent connects
    inbox = f"{device_inbox_prefix(device.tenant, device.device_id)}.{uuid.uuid4().hex}"
    sub = await bus.nc.subscribe(inbox, max_msgs=1)
    await bus.nc.publish(subject, payload, reply=inbox, headers=headers)
    reply = await sub.next_msg(timeout=10)
    return msg_id, orjson.loads(reply.data)


async def test_a_device_command_answers_only_under_the_devices_own_inbox(
    bus: Bus, services: Any
) -> None:
    """approval-svc may publish where a device may not: a reply subject the device chose
    elsewhere (an event subject, another device's inbox) gets no answer, and nothing is
    written there."""
    device = await enroll(bus)
    subject = device_rpc_subject(device.tenant, device.device_id, "self_generate_code")
    forged = "epm.evt.acme.request.req-forged.Approved"
    other = f"{device_inbox_prefix(device.tenant, 'd-other')}.x"
    subs = [await bus.nc.subscribe(s) for s in (forged, other)]
    for reply in (forged, other):
        msg_id = str(uuid.uuid4())
        payload = orjson.dumps({"purpose": "app", "issued_at": datetime.now(UTC).isoformat()})
        signature = device.signing_key.sign(signing_bytes(subject, msg_id, payload))
        headers = {"Nats-Msg-Id": msg_id, SIGNATURE_HEADER: base64.b64encode(signature).decode()}
        await bus.nc.publish(subject, payload, reply=reply, headers=headers)
    await asyncio.sleep(1)
    assert [s.pending_msgs for s in subs] == [0, 0]
    with pytest.raises(nats.js.errors.NotFoundError):
        await bus.js.get_last_msg("EPM_EVENTS", forged)


async def test_a_device_generates_its_own_code_only_where_the_policy_allows(
    bus: Bus, services: Any
) -> None:
    device = await enroll(bus)
    _, refusal = await self_generate(bus, device, purpose="app")
    assert refusal["error"]["status"] == 403 and "self_service" in refusal["error"]["detail"]

    await ask(bus, "set_policy", ACME_ADMIN, tenant="acme", policy={"self_service": True})
    msg_id, answer = await self_generate(bus, device, purpose="app", sha256=SHA)
    result = answer["result"]
    assert "code" not in result  # sealed to the device: a replayed request shows nobody a code
    code = open_sealed(
        device.encryption_private,
        result["sealed_code"],
        reply_context("acme", device.device_id, msg_id),
    ).decode()
    grant = verify_access_code(
        device.keys().access_code, device.device_id, code, 1, today(), sha256=SHA
    )
    assert grant.pinned_sha256 == SHA
    [event] = await events_named(bus, "OfflineCodeIssued")
    assert event["self_generated"] is True
    assert event["issued_by"] == f"device:{device.device_id}"
    assert event["code_hash"] == access_code_hash(code, device.keys().access_code)


async def test_a_device_command_with_a_bad_or_stale_signature_is_refused(
    bus: Bus, services: Any
) -> None:
    await ask(bus, "set_policy", ACME_ADMIN, tenant="acme", policy={"self_service": True})
    device = await enroll(bus)
    _, unsigned = await self_generate(bus, device, sign=False, purpose="app")
    assert unsigned["error"]["status"] == 401
    impostor = await enroll(bus)
    impostor.device_id = device.device_id  # signs as itself, claims the other device
    _, forged = await self_generate(bus, impostor, purpose="app")
    assert forged["error"]["status"] == 401
    _, stale = await self_generate(
        bus, device, purpose="app", issued_at=datetime.now(UTC) - timedelta(hours=1)
    )
    assert stale["error"]["status"] == 401 and "older" in stale["error"]["detail"]
    assert await events_named(bus, "OfflineCodeIssued") == []


# --- rebuild and secrets ----------------------------------------------------------------------


async def test_a_rebuilt_projection_keeps_the_tenant_key_and_the_counters(
    bus: Bus, offline_settings: Settings, services: tuple[RunningService, RunningService]
) -> None:
    device = await enroll(bus)
    await codes(bus, device, count=3)
    approval, _ = services
    await approval.stop()
    for f in offline_settings.data_dir.glob("approval-svc-offline*"):
        f.unlink()
    rebuilt = await start_service(APPROVAL, offline_settings)
    try:
        [code] = (await codes(bus, device))["codes"]
        grant = verify_access_code(
            device.keys().access_code, device.device_id, code["code"], 1, today()
        )
        assert grant.counter == 3  # the enrollment key material still opens it: same tenant key
        assert len(await events_named(bus, "TenantKeyCreated")) == 1
    finally:
        await rebuilt.stop()


async def test_no_code_or_key_appears_in_any_event_or_log_line(
    bus: Bus, offline_settings: Settings, services: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await ask(
        bus,
        "set_policy",
        ACME_ADMIN,
        tenant="acme",
        policy={"admin_codes": True, "self_service": True},
    )
    device = await enroll(bus)
    secrets_shown: list[str] = []
    for c in (await codes(bus, device, count=2, sha256=SHA))["codes"]:
        secrets_shown.append(c["code"])
    secrets_shown.append(
        (await respond(bus, device, request_code="909090", grant="admin", minutes=15))[
            "response_code"
        ]
    )
    await ask(bus, "rotate_device_key", ACME_ADMIN, tenant="acme", device_id=device.device_id)
    [update] = await wait_device_messages(bus, device, "key", 1)
    [key_event] = await events_named(bus, "TenantKeyCreated")
    box = SecretBox.from_master_key(offline_settings.master_key)
    tenant_key = box.open(key_event["ciphertext"], "tenantkey:acme:1")
    raw_keys = [tenant_key]
    for keys in (device.keys(), device.keys(update)):
        raw_keys += [keys.response, keys.access_code]
    needles = [s for code in secrets_shown for s in (code, code.replace("-", ""))]
    needles += [k.hex() for k in raw_keys] + [base64.b64encode(k).decode() for k in raw_keys]
    needles.append(offline_settings.master_key or "")

    haystacks = [data.decode() for _, data in await raw_events(bus)]
    haystacks += [f"{r.getMessage()} {r.__dict__}" for r in caplog.records]
    assert caplog.records  # the services did log
    for needle in needles:
        assert not any(needle in h for h in haystacks), "a secret leaked into an event or log"
