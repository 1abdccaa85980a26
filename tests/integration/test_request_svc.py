"""request-svc on a real nats-server: enrollment, signed intake, refusals, expiry, device channel."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from epm_events.agent import REPLY_HEADER, SIGNATURE_HEADER, signing_bytes
from epm_events.catalog import TenantCreated
from epm_events.codec import decode
from epm_events.envelope import agent_source
from epm_events.ids import approval_used_id, request_id_for
from epm_events.subjects import agent_subject, device_inbox_prefix
from epm_request import answers
from epm_request.app import DEFINITION
from epm_service.bus import Bus
from epm_service.errors import CommandError
from epm_service.principal import Principal
from epm_service.publisher import EventPublisher
from epm_service.rpc import call
from epm_service.runtime import RunningService, start_service
from epm_service.settings import Settings

ADMIN = Principal(token_id="t0", name="root", role="msp_admin", tenant=None)
SHA = "c" * 64


async def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.05)


@dataclass
class Device:
    tenant: str
    device_id: str
    key: Ed25519PrivateKey

    def message(
        self,
        user: str = "bob",
        sha: str = SHA,
        *,
        tenant: str | None = None,
        sign_with: Ed25519PrivateKey | None = None,
        reply: str | None = None,
        signed: bool = True,
    ) -> tuple[str, bytes, dict[str, str]]:
        msg_id = str(uuid.uuid4())
        env = {
            "specversion": "1.0",
            "id": msg_id,
            "source": agent_source(self.tenant, self.device_id),
            "type": "epm.ElevationRequested.v1",
            "subject": self.device_id,
            "time": "2026-11-23T12:00:00Z",
            "tenant": tenant or self.tenant,
            "data": {
                "user": user,
                "reason": "need it",
                "app": {
                    "file_name": "setup.exe",
                    "sha256": sha,
                    "publisher": "Contoso",
                    "app_name": "Setup",
                    "path": "C:\\Temp\\setup.exe",
                },
            },
        }
        body = orjson.dumps(env)
        subject = agent_subject(self.tenant, self.device_id, "ElevationRequested")
        headers = {"Nats-Msg-Id": msg_id}
        if signed:
            sig = (sign_with or self.key).sign(signing_bytes(subject, msg_id, body))
            headers[SIGNATURE_HEADER] = base64.b64encode(sig).decode()
        if reply:
            headers[REPLY_HEADER] = reply
        return subject, body, headers

    def used(self, request_id: str) -> tuple[str, bytes, dict[str, str]]:
        """The agent's signed report that its user used the approval of ``request_id``."""
        msg_id = approval_used_id(request_id)
        env = {
            "specversion": "1.0",
            "id": msg_id,
            "source": agent_source(self.tenant, self.device_id),
            "type": "epm.ApprovalUsed.v1",
            "subject": self.device_id,
            "time": "2026-11-23T12:00:00Z",
            "tenant": self.tenant,
            "data": {"request_id": request_id},
        }
        body = orjson.dumps(env)
        subject = agent_subject(self.tenant, self.device_id, "ApprovalUsed")
        sig = self.key.sign(signing_bytes(subject, msg_id, body))
        return (
            subject,
            body,
            {"Nats-Msg-Id": msg_id, SIGNATURE_HEADER: base64.b64encode(sig).decode()},
        )


@pytest.fixture
async def request_svc(
    bus: Bus, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[RunningService]:
    settings.request_ttl = 3600
    # No approval-svc runs here: nothing will decide a request or say it is undecided, and
    # every answer would wait the whole DECISION_WAIT_SECONDS before saying "open".
    monkeypatch.setattr(answers, "DECISION_WAIT_SECONDS", 0.1)
    pub = EventPublisher(bus.js, "/epm/test")
    for t in ("acme", "globex"):
        await pub.append(t, [TenantCreated(tenant_id=t, name=t.title(), created_by="test")], 0)
    running = await start_service(DEFINITION, settings)
    yield running
    await running.stop()


async def enroll(bus: Bus, tenant: str, hostname: str = "pc-1") -> Device:
    created = await call(
        bus.nc, "request-svc", "create_enrollment_token", {"tenant": tenant}, ADMIN
    )
    key = Ed25519PrivateKey.generate()
    pub = base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
    answer = await call(
        bus.nc,
        "request-svc",
        "enroll",
        {"enrollment_token": created["token"], "public_key": pub, "hostname": hostname},
        ADMIN,
    )
    assert answer["tenant"] == tenant
    assert answer["inbox_prefix"] == device_inbox_prefix(tenant, answer["device_id"])
    return Device(tenant, answer["device_id"], key)


async def events_of_type(bus: Bus, name: str) -> list[dict[str, Any]]:
    out = []
    info = await bus.js.stream_info("EPM_EVENTS")
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await bus.js.get_msg("EPM_EVENTS", seq)
        if msg.subject.endswith("." + name):
            out.append(decode(msg.data or b"").model_dump())
    return out


async def test_enrollment_token_works_once(bus: Bus, request_svc: RunningService) -> None:
    created = await call(
        bus.nc, "request-svc", "create_enrollment_token", {"tenant": "acme"}, ADMIN
    )
    key = base64.b64encode(b"k" * 32).decode()
    args = {"enrollment_token": created["token"], "public_key": key, "hostname": "pc"}
    await call(bus.nc, "request-svc", "enroll", args, ADMIN)
    with pytest.raises(CommandError) as err:
        await call(bus.nc, "request-svc", "enroll", args, ADMIN)
    assert err.value.status == 403 and "already used" in err.value.detail
    with pytest.raises(CommandError) as err:
        await call(bus.nc, "request-svc", "enroll", {**args, "enrollment_token": "enr_nope"}, ADMIN)
    assert err.value.status == 401 and "unknown" in err.value.detail


async def test_signed_request_becomes_an_open_request_answered_on_the_reply_subject(
    bus: Bus, request_svc: RunningService
) -> None:
    dev = await enroll(bus, "acme")
    reply = f"{device_inbox_prefix('acme', dev.device_id)}.r1"
    sub = await bus.nc.subscribe(reply, max_msgs=1)
    subject, body, headers = dev.message(reply=reply)
    await bus.js.publish(subject, body, headers=headers)
    msg = await sub.next_msg(timeout=10)
    answer = orjson.loads(msg.data)
    assert answer["request_id"] == request_id_for(headers["Nats-Msg-Id"])
    assert answer["status"] == "open"  # no approval-svc running: a human decides later
    page = await call(bus.nc, "request-svc", "list_requests", {"tenant": "acme"}, ADMIN)
    assert [r["id"] for r in page["items"]] == [answer["request_id"]]
    shown = await call(
        bus.nc, "request-svc", "get_request", {"request_id": answer["request_id"]}, ADMIN
    )
    assert shown["app"]["sha256"] == SHA and shown["history"][0]["type"] == "RequestCreated"
    other = Principal(token_id="t1", name="eve", role="tenant_admin", tenant="globex")
    with pytest.raises(CommandError) as err:
        await call(
            bus.nc, "request-svc", "get_request", {"request_id": answer["request_id"]}, other
        )
    assert err.value.status == 404
    assert (await call(bus.nc, "request-svc", "list_requests", {}, other))["items"] == []


async def test_same_message_sent_twice_creates_one_request(
    bus: Bus, request_svc: RunningService
) -> None:
    dev = await enroll(bus, "acme")
    subject, body, headers = dev.message()
    await bus.js.publish(subject, body, headers=headers)
    await bus.js.publish(subject, body, headers={**headers, "Nats-Msg-Id": headers["Nats-Msg-Id"]})

    async def created() -> list[dict[str, Any]]:
        return await events_of_type(bus, "RequestCreated")

    assert len(await eventually(created)) == 1


async def revoke(bus: Bus, dev: Device) -> None:
    """An admin revokes the device (the command returns once request-svc's store has it)."""
    await call(
        bus.nc,
        "request-svc",
        "revoke_device",
        {"tenant": dev.tenant, "device_id": dev.device_id},
        ADMIN,
    )


@pytest.mark.parametrize("case", ["wrong_key", "unsigned", "other_tenant", "revoked"])
async def test_refused_messages_raise_a_security_alert_and_create_nothing(
    bus: Bus, request_svc: RunningService, case: str
) -> None:
    dev = await enroll(bus, "acme")
    if case == "wrong_key":
        subject, body, headers = dev.message(sign_with=Ed25519PrivateKey.generate())
    elif case == "unsigned":
        subject, body, headers = dev.message(signed=False)
    elif case == "other_tenant":
        subject, body, headers = dev.message()
        subject = agent_subject("globex", dev.device_id, "ElevationRequested")
    else:
        await revoke(bus, dev)
        subject, body, headers = dev.message()
    await bus.js.publish(subject, body, headers=headers)
    # a good message right behind it is still handled
    good_dev = await enroll(bus, "acme")
    s2, b2, h2 = good_dev.message()
    await bus.js.publish(s2, b2, headers=h2)

    async def alerts() -> list[dict[str, Any]]:
        return await events_of_type(bus, "SecurityAlertRaised")

    found = await eventually(alerts)
    assert len(found) == 1
    assert found[0]["data"]["device_id"] == dev.device_id

    async def created() -> list[dict[str, Any]]:
        return await events_of_type(bus, "RequestCreated")

    requests = await eventually(created)
    assert [r["data"]["device_id"] for r in requests] == [good_dev.device_id]


async def test_a_device_revoked_after_it_was_heard_is_refused_from_then_on(
    bus: Bus, request_svc: RunningService
) -> None:
    """The intake keeps the devices it has heard (their key and tenant never change) until
    the store commits a revocation: the next message after it is refused."""
    dev = await enroll(bus, "acme")
    reply = f"{device_inbox_prefix('acme', dev.device_id)}.r1"
    sub = await bus.nc.subscribe(reply, max_msgs=1)
    subject, body, headers = dev.message(reply=reply)
    await bus.js.publish(subject, body, headers=headers)
    assert orjson.loads((await sub.next_msg(timeout=10)).data)["status"] == "open"
    await revoke(bus, dev)
    subject, body, headers = dev.message()
    await bus.js.publish(subject, body, headers=headers)

    async def alerts() -> list[dict[str, Any]]:
        return await events_of_type(bus, "SecurityAlertRaised")

    found = await eventually(alerts)
    assert [(a["data"]["kind"], a["data"]["device_id"]) for a in found] == [
        ("revoked_device", dev.device_id)
    ]
    assert len(await events_of_type(bus, "RequestCreated")) == 1


async def test_malformed_message_is_dead_lettered(bus: Bus, request_svc: RunningService) -> None:
    dev = await enroll(bus, "acme")
    subject, _, headers = dev.message()
    body = b"{not json"
    headers[SIGNATURE_HEADER] = base64.b64encode(
        dev.key.sign(signing_bytes(subject, headers["Nats-Msg-Id"], body))
    ).decode()
    await bus.js.publish(subject, body, headers=headers)

    async def dlq() -> Any:
        info = await bus.js.stream_info("EPM_DLQ")
        return info.state.messages

    await eventually(dlq)
    msg = await bus.js.get_msg("EPM_DLQ", 1)
    assert msg.headers and msg.headers["Epm-Dlq-Reason"] == "malformed"


async def test_undecided_request_expires_and_the_device_is_told(
    bus: Bus, settings: Settings
) -> None:
    settings.request_ttl = 0.5
    pub = EventPublisher(bus.js, "/epm/test")
    await pub.append("acme", [TenantCreated(tenant_id="acme", name="Acme", created_by="t")], 0)
    running = await start_service(DEFINITION, settings)
    try:
        dev = await enroll(bus, "acme")
        subject, body, headers = dev.message()
        await bus.js.publish(subject, body, headers=headers)

        async def expired() -> list[dict[str, Any]]:
            return await events_of_type(bus, "RequestExpired")

        assert len(await eventually(expired)) == 1

        async def told() -> Any:
            info = await bus.js.stream_info("EPM_DEVICE")
            return info.state.messages

        await eventually(told)
        msg = await bus.js.get_msg("EPM_DEVICE", 1)
        assert msg.subject == f"epm.device.acme.{dev.device_id}.decision"
        assert orjson.loads(msg.data or b"")["status"] == "expired"
    finally:
        await running.stop()


async def test_readiness_counts_the_intakes_own_connection(
    bus: Bus, request_svc: RunningService
) -> None:
    assert request_svc.ready() == (True, "")
    intake = request_svc.ctx.connections["intake"].nc
    status = intake._status
    intake._status = intake.RECONNECTING  # what nats-py shows while it reconnects
    try:
        assert request_svc.ready() == (
            False,
            "the intake connection to NATS is down (reconnecting)",
        )
    finally:
        intake._status = status
    assert request_svc.ready() == (True, "")


# --- the device list, paged -------------------------------------------------------------

FOREIGN = "cursor is not one this API handed out: use next_cursor from the previous page"


async def command_pages(
    bus: Bus, service: str, command: str, args: dict[str, Any], who: Principal
) -> tuple[list[dict[str, Any]], list[int]]:
    """Every page of a service's list command, following next_cursor: the items and the
    page sizes."""
    seen: list[dict[str, Any]] = []
    sizes: list[int] = []
    cursor: str | None = None
    for _ in range(50):
        page = await call(bus.nc, service, command, {**args, "cursor": cursor}, who)
        seen += page["items"]
        sizes.append(len(page["items"]))
        cursor = page.get("next_cursor")
        if cursor is None:
            return seen, sizes
    raise AssertionError("no last page after 50 pages")


async def device_pages(
    bus: Bus, args: dict[str, Any], who: Principal = ADMIN
) -> tuple[list[dict[str, Any]], list[int]]:
    """Every page of ``list_devices``: the devices and page sizes."""
    return await command_pages(bus, "request-svc", "list_devices", args, who)


async def help_desk_fleet(bus: Bus) -> dict[str, Device]:
    """Eight acme devices by name (hostname pc-<first letter>): two with an open request
    (pc-e's device revoked since), pc-a three times (one revoked; between the other two the
    id decides); and one globex device."""
    names = ["c", "a-revoked", "e-open-revoked", "b", "d-open", "a", "a-twin", "f"]
    fleet = {name: await enroll(bus, "acme", "pc-" + name[0]) for name in names}
    fleet["globex"] = await enroll(bus, "globex", "pc-a")
    for name in ("e-open-revoked", "d-open"):
        subject, body, headers = fleet[name].message()
        await bus.js.publish(subject, body, headers=headers)

    async def both_open() -> bool:
        page = await call(
            bus.nc, "request-svc", "list_devices", {"tenant": "acme", "offline_open": True}, ADMIN
        )
        return len(page["items"]) == 2

    await eventually(both_open)
    await revoke(bus, fleet["a-revoked"])
    await revoke(bus, fleet["e-open-revoked"])
    return fleet


async def test_device_pages_cover_every_device_once_open_requests_first_revoked_last(
    bus: Bus, request_svc: RunningService
) -> None:
    fleet = await help_desk_fleet(bus)
    twins = sorted([fleet["a"].device_id, fleet["a-twin"].device_id])  # one hostname
    expected = [
        (fleet["d-open"].device_id, True, False),
        (fleet["e-open-revoked"].device_id, True, True),  # an open request: before the rest
        *((device_id, False, False) for device_id in twins),
        *((fleet[n].device_id, False, False) for n in ("b", "c", "f")),
        (fleet["a-revoked"].device_id, False, True),  # revoked: last
    ]
    whole = await call(bus.nc, "request-svc", "list_devices", {"tenant": "acme"}, ADMIN)
    assert [(d["id"], d["offline_open"], d["revoked"]) for d in whole["items"]] == expected
    assert "next_cursor" not in whole  # 8 of the default 100
    for limit in (1, 2, 3, 8):
        listed, sizes = await device_pages(bus, {"tenant": "acme", "limit": limit})
        assert [d["id"] for d in listed] == [e[0] for e in expected], limit
        assert all(size == limit for size in sizes[:-1]) and sizes[-1] <= limit
        assert listed == whole["items"]  # the same devices, field for field


async def test_device_pages_with_offline_open_keep_to_devices_with_an_open_request(
    bus: Bus, request_svc: RunningService
) -> None:
    fleet = await help_desk_fleet(bus)
    listed, sizes = await device_pages(bus, {"tenant": "acme", "offline_open": True, "limit": 1})
    assert [d["id"] for d in listed] == [
        fleet["d-open"].device_id,
        fleet["e-open-revoked"].device_id,
    ]
    assert sizes == [1, 1, 0]  # a full last page has a cursor; the page after it is empty


async def test_a_device_cursor_this_api_did_not_hand_out_is_invalid(
    bus: Bus, request_svc: RunningService
) -> None:
    await help_desk_fleet(bus)
    requests_cursor = "300"
    for cursor in (requests_cursor, "bm90IG9uZSBvZiBvdXJz", "é", "devices:[0,0,'a','b']"):
        with pytest.raises(CommandError) as err:
            await call(
                bus.nc, "request-svc", "list_devices", {"tenant": "acme", "cursor": cursor}, ADMIN
            )
        assert err.value.status == 422 and err.value.detail.startswith(FOREIGN), cursor
    for limit in (0, 501):
        with pytest.raises(CommandError) as err:
            await call(
                bus.nc, "request-svc", "list_devices", {"tenant": "acme", "limit": limit}, ADMIN
            )
        assert err.value.status == 422


async def test_another_tenants_device_list_is_not_found_whatever_the_cursor(
    bus: Bus, request_svc: RunningService
) -> None:
    await help_desk_fleet(bus)
    first = await call(bus.nc, "request-svc", "list_devices", {"tenant": "acme", "limit": 2}, ADMIN)
    stranger = Principal(token_id="t1", name="eve", role="tenant_admin", tenant="globex")
    for extra in ({}, {"cursor": first["next_cursor"]}, {"cursor": "garbage"}):
        with pytest.raises(CommandError) as err:
            await call(bus.nc, "request-svc", "list_devices", {"tenant": "acme", **extra}, stranger)
        assert err.value.status == 404, extra
    own = await call(bus.nc, "request-svc", "list_devices", {"tenant": "globex"}, stranger)
    assert [d["hostname"] for d in own["items"]] == ["pc-a"]
