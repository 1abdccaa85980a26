"""notify-svc on a real nats-server, with real receivers on loopback.

- an HTTP server (aiohttp) that verifies every webhook with the Standard
  Webhooks reference library, and acts as a Web Push service: it checks the
  VAPID authorization and decrypts the aes128gcm payload with the keys of a
  subscription made here;
- an SMTP server (aiosmtpd) that receives the mail.
Requests are created by appending RequestCreated directly.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from typing import Any

import http_ece
import orjson
import pytest
from aiohttp import web
from aiosmtpd.controller import Controller
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from epm_events.catalog import Actor, AppInfo, Approved, RequestCreated, TenantCreated
from epm_events.codec import decode
from epm_events.ids import derived_event_id
from epm_notify.app import DEFINITION
from epm_service.bus import Bus
from epm_service.errors import CommandError
from epm_service.principal import Principal
from epm_service.publisher import EventPublisher
from epm_service.rpc import call
from epm_service.runtime import RunningService, start_service
from epm_service.settings import Settings
from py_vapid import Vapid02  # type: ignore[import-untyped]
from standardwebhooks import Webhook

from tests.integration.test_request_svc import command_pages

ADMIN = Principal(token_id="t0", name="root", role="msp_admin", tenant=None)
ACME_ADMIN = Principal(token_id="t1", name="ann", role="tenant_admin", tenant="acme")
ACME_TECH = Principal(token_id="t2", name="tom", role="tenant_technician", tenant="acme")
PUBLIC_URL = "https://epm.example.com"
SVC = "notify-svc"


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- receivers ----------------------------------------------------------------------------


@dataclass
class Hook:
    """One webhook endpoint: answers ``status`` (503 = down) and keeps what verified."""

    secret: str = ""
    status: int = 204
    received: list[dict[str, Any]] = field(default_factory=list)
    tries: int = 0


@dataclass
class PushSub:
    key: ec.EllipticCurvePrivateKey
    auth: bytes
    received: list[dict[str, Any]] = field(default_factory=list)

    def subscription(self, endpoint: str) -> dict[str, Any]:
        point = self.key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        return {"endpoint": endpoint, "keys": {"p256dh": b64url(point), "auth": b64url(self.auth)}}


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class Receiver:
    """Webhooks at /hooks/<name>, a push service at /push/<name>, on 127.0.0.1."""

    def __init__(self, port: int = 0) -> None:
        self.hooks: dict[str, Hook] = {}
        self.subs: dict[str, PushSub] = {}
        self.vapid_key: str | None = None
        self.port = port
        self.errors: list[str] = []
        app = web.Application()
        app.router.add_post("/hooks/{name}", self.on_hook)
        app.router.add_post("/push/{name}", self.on_push)
        self.runner = web.AppRunner(app)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def start(self) -> Receiver:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        await self.runner.cleanup()

    async def on_hook(self, request: web.Request) -> web.Response:
        hook = self.hooks[request.match_info["name"]]
        hook.tries += 1
        body = await request.read()
        try:
            payload = Webhook(hook.secret).verify(body, dict(request.headers))
        except Exception as exc:
            self.errors.append(f"signature: {exc}")
            return web.Response(status=401)
        if hook.status >= 300:
            return web.Response(status=hook.status)
        hook.received.append({"webhook-id": request.headers["webhook-id"], "body": payload})
        return web.Response(status=hook.status)

    async def on_push(self, request: web.Request) -> web.Response:
        sub = self.subs[request.match_info["name"]]
        h = request.headers
        try:
            assert h["Content-Encoding"] == "aes128gcm", h.get("Content-Encoding")
            assert int(h["TTL"]) > 0
            auth = h["Authorization"]
            assert auth.startswith("vapid t="), auth
            assert Vapid02.verify(auth), "VAPID token does not verify"
            assert auth.rsplit("k=", 1)[1] == self.vapid_key, "not this deployment's VAPID key"
            plain = http_ece.decrypt(
                await request.read(), private_key=sub.key, auth_secret=sub.auth, version="aes128gcm"
            )
        except Exception as exc:
            self.errors.append(f"push: {exc!r}")
            return web.Response(status=400)
        sub.received.append(orjson.loads(plain))
        return web.Response(status=201)


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            self.messages.append((envelope.rcpt_tos, message_from_bytes(envelope.content)))
        return "250 OK"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.stop()


@pytest.fixture
def mailbox() -> Any:
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    box.url = f"smtp://127.0.0.1:{port}"  # type: ignore[attr-defined]
    yield box
    controller.stop()


@pytest.fixture
def notify_settings(settings: Settings, monkeypatch: pytest.MonkeyPatch, mailbox: Any) -> Settings:
    settings.master_key = base64.b64encode(secrets.token_bytes(32)).decode()
    settings.public_url = PUBLIC_URL
    settings.smtp_url = mailbox.url
    for name, value in {
        "RETRY_BASE": "0.1",
        "RETRY_CAP": "0.4",
        "MAX_ATTEMPTS": "4",
        "HTTP_TIMEOUT": "2",
        "ALLOW_PRIVATE_WEBHOOKS": "true",  # the receivers listen on loopback
    }.items():
        monkeypatch.setenv(f"EPM_NOTIFY_{name}", value)
    return settings


@pytest.fixture
async def notify(bus: Bus, notify_settings: Settings) -> AsyncIterator[RunningService]:
    pub = EventPublisher(bus.js, "/epm/test")
    for t in ("acme", "globex"):
        await pub.append(t, [TenantCreated(tenant_id=t, name=t.title(), created_by="test")], 0)
    running = await start_service(DEFINITION, notify_settings)
    yield running
    with contextlib.suppress(Exception):
        await running.stop()


# --- helpers ------------------------------------------------------------------------------


async def add_webhook(bus: Bus, receiver: Receiver, name: str, tenant: str | None) -> str:
    args: dict[str, Any] = {"kind": "webhook", "url": receiver.url(f"/hooks/{name}")}
    if tenant:
        args["tenant"] = tenant
    ch = await call(bus.nc, SVC, "add_channel", args, ADMIN)
    receiver.hooks[name] = Hook(secret=ch["secret"])
    return str(ch["id"])


async def create_request(bus: Bus, tenant: str, user: str = "bob") -> tuple[str, str, int]:
    """Append RequestCreated; (request id, event id, sequence)."""
    request_id = "req-" + secrets.token_hex(8)
    now = datetime.now(UTC)
    event = RequestCreated(
        request_id=request_id,
        device_id="pc-1",
        user=user,
        app=AppInfo(file_name="setup.exe", sha256="c" * 64, publisher="Contoso", app_name="Setup"),
        reason="printer driver",
        created_at=now,
        expires_at=now + timedelta(days=4),
    )
    [appended] = await EventPublisher(bus.js, "/epm/request-svc").append(tenant, [event], 0)
    return request_id, appended.envelope.id, appended.seq


async def events_of_type(bus: Bus, name: str) -> list[dict[str, Any]]:
    out = []
    info = await bus.js.stream_info("EPM_EVENTS")
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await bus.js.get_msg("EPM_EVENTS", seq)
        if msg.subject.endswith("." + name):
            out.append(decode(msg.data or b"").model_dump())
    return out


async def sent_count(bus: Bus, n: int) -> list[dict[str, Any]] | None:
    sent = await events_of_type(bus, "NotificationSent")
    return sent if len(sent) >= n else None


# --- channels -----------------------------------------------------------------------------


async def test_a_webhook_secret_is_shown_once_and_travels_only_as_ciphertext(
    bus: Bus, notify: RunningService, receiver: Receiver
) -> None:
    ch = await call(
        bus.nc,
        SVC,
        "add_channel",
        {"tenant": "acme", "kind": "webhook", "url": "https://h/x"},
        ACME_ADMIN,
    )
    assert ch["secret"].startswith("whsec_") and ch["tenant"] == "acme"
    listed = await call(bus.nc, SVC, "list_channels", {"tenant": "acme"}, ACME_ADMIN)
    assert [c["id"] for c in listed["items"]] == [ch["id"]]
    assert "secret" not in listed["items"][0]
    [added] = await events_of_type(bus, "NotificationChannelAdded")
    assert ch["secret"] not in orjson.dumps(added).decode()
    assert added["data"]["secret_ciphertext"] and added["tenant"] == "acme"


async def test_channels_of_another_tenant_are_not_found_and_non_admins_are_forbidden(
    bus: Bus, notify: RunningService
) -> None:
    args = {"tenant": "globex", "kind": "email", "to": "ops@globex.example"}
    ch = await call(bus.nc, SVC, "add_channel", args, ADMIN)
    cases = [
        ("add_channel", args, ACME_ADMIN, 404),
        ("list_channels", {"tenant": "globex"}, ACME_ADMIN, 404),
        ("remove_channel", {"channel_id": ch["id"]}, ACME_ADMIN, 404),
        ("add_channel", {**args, "tenant": "acme"}, ACME_TECH, 403),
        ("add_channel", {"kind": "email", "to": "msp@example.com"}, ACME_ADMIN, 403),
        ("add_channel", {"tenant": "acme", "kind": "webhook", "url": "ftp://x"}, ACME_ADMIN, 422),
        ("add_channel", {"tenant": "nope", "kind": "email", "to": "a@b.c"}, ADMIN, 404),
    ]
    for command, cargs, who, status in cases:
        with pytest.raises(CommandError) as err:
            await call(bus.nc, SVC, command, cargs, who)
        assert err.value.status == status, (command, cargs, who.role, err.value.detail)
    await call(bus.nc, SVC, "remove_channel", {"channel_id": ch["id"]}, ADMIN)
    assert (await call(bus.nc, SVC, "list_channels", {"tenant": "globex"}, ADMIN))["items"] == []


async def channel_pages(
    bus: Bus, args: dict[str, Any], who: Principal
) -> tuple[list[dict[str, Any]], list[int]]:
    """Every page of ``list_channels``: the channels and page sizes."""
    return await command_pages(bus, SVC, "list_channels", args, who)


async def test_channel_pages_cover_every_channel_once_oldest_first(
    bus: Bus, notify: RunningService
) -> None:
    async def add(tenant: str | None, n: int) -> str:
        args: dict[str, Any] = {"kind": "webhook", "url": f"https://hooks.example.com/{n}"}
        ch = await call(bus.nc, SVC, "add_channel", {**args, "tenant": tenant}, ADMIN)
        return str(ch["id"])

    acme = [await add("acme", n) for n in range(6)]
    msp = [await add(None, n) for n in range(3)]
    await add("globex", 0)
    await call(bus.nc, SVC, "remove_channel", {"channel_id": acme.pop(2)}, ACME_ADMIN)
    whole = await call(bus.nc, SVC, "list_channels", {"tenant": "acme"}, ACME_ADMIN)
    assert [c["id"] for c in whole["items"]] == acme and "next_cursor" not in whole
    for limit in (1, 2, 5):
        listed, sizes = await channel_pages(bus, {"tenant": "acme", "limit": limit}, ACME_ADMIN)
        assert listed == whole["items"], limit
        assert all(size == limit for size in sizes[:-1]) and sizes[-1] <= limit
    assert sizes == [5, 0]  # a full last page has a cursor; the page after it is empty
    listed, sizes = await channel_pages(bus, {"limit": 2}, ADMIN)  # the MSP-wide ones
    assert [c["id"] for c in listed] == msp and sizes == [2, 1]
    assert {c["tenant"] for c in listed} == {None}


async def test_a_channel_cursor_this_api_did_not_hand_out_is_invalid_and_others_stay_hidden(
    bus: Bus, notify: RunningService
) -> None:
    for n in range(3):
        args = {"tenant": "acme", "kind": "email", "to": f"ops{n}@acme.example"}
        await call(bus.nc, SVC, "add_channel", args, ADMIN)
    first = await call(bus.nc, SVC, "list_channels", {"tenant": "acme", "limit": 1}, ADMIN)
    device_cursor = "ZGV2aWNlczpbMCwwLCJwYyIsImQtMSJd"  # devices:[0,0,"pc","d-1"]
    for cursor in ("300", device_cursor, "é", "not a cursor"):
        with pytest.raises(CommandError) as err:
            await call(bus.nc, SVC, "list_channels", {"tenant": "acme", "cursor": cursor}, ADMIN)
        assert err.value.status == 422, cursor
        assert err.value.detail.startswith("cursor is not one this API handed out"), cursor
    with pytest.raises(CommandError) as err:
        await call(bus.nc, SVC, "list_channels", {"tenant": "acme", "limit": 501}, ADMIN)
    assert err.value.status == 422
    globex_admin = Principal(token_id="t3", name="gus", role="tenant_admin", tenant="globex")
    for extra in ({}, {"cursor": first["next_cursor"]}, {"cursor": "garbage"}):
        with pytest.raises(CommandError) as err:
            await call(bus.nc, SVC, "list_channels", {"tenant": "acme", **extra}, globex_admin)
        assert err.value.status == 404, extra


# --- deliveries ---------------------------------------------------------------------------


async def test_a_new_request_reaches_every_channel_of_its_tenant_and_the_msp_but_no_other(
    bus: Bus,
    notify: RunningService,
    receiver: Receiver,
    mailbox: Mailbox,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG")
    receiver.vapid_key = (await call(bus.nc, SVC, "vapid_public_key", {}, ACME_TECH))["public_key"]
    acme_ch = await add_webhook(bus, receiver, "acme", "acme")
    await add_webhook(bus, receiver, "msp", None)
    await add_webhook(bus, receiver, "globex", "globex")
    await call(
        bus.nc,
        SVC,
        "add_channel",
        {"tenant": "acme", "kind": "email", "to": "tech@acme.example"},
        ADMIN,
    )
    phone = PushSub(ec.generate_private_key(ec.SECP256R1()), secrets.token_bytes(16))
    receiver.subs["phone"] = phone
    sub = phone.subscription(receiver.url("/push/phone"))
    await call(
        bus.nc,
        SVC,
        "add_channel",
        {"tenant": "acme", "kind": "push", "subscription": sub},
        ACME_ADMIN,
    )

    request_id, event_id, seq = await create_request(bus, "acme")
    await eventually(lambda: sent_count(bus, 4))
    link = f"{PUBLIC_URL}/#/requests/{request_id}"
    for name in ("acme", "msp"):
        [got] = receiver.hooks[name].received
        assert got["body"]["id"] == event_id and got["body"]["type"] == "epm.RequestCreated.v1"
        assert got["body"]["data"]["user"] == "bob" and got["body"]["link"] == link
    [(to, mail)] = mailbox.messages
    assert to == ["tech@acme.example"] and "Setup by Contoso" in mail["Subject"]
    assert link in mail.get_payload() and "bob" in mail["Subject"]
    [push] = phone.received
    assert push["url"] == link and push["tag"] == request_id
    assert receiver.hooks["globex"].received == [] and receiver.errors == []
    sent = await events_of_type(bus, "NotificationSent")
    assert {s["data"]["attempt"] for s in sent} == {1}
    assert all(s["data"]["source_event_id"] == event_id for s in sent)

    # a technician's decision: a follow-up to the same channels
    decision = Approved(request_id=request_id, scope="once", by=Actor(kind="technician", id="tom"))
    [approved] = await EventPublisher(bus.js, "/epm/approval-svc").append("acme", [decision], seq)
    await eventually(lambda: sent_count(bus, 8))
    follow = receiver.hooks["acme"].received[-1]
    assert follow["body"]["type"] == "epm.Approved.v1" and follow["body"]["link"] == link
    assert follow["webhook-id"] == derived_event_id(approved.envelope.id, acme_ch)
    assert mailbox.messages[-1][1]["Subject"].startswith("Approved:")
    assert phone.received[-1]["title"].startswith("Approved:")
    assert receiver.hooks["globex"].received == []
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "notification sent" in logged
    for secret in [h.secret for h in receiver.hooks.values()] + [b64url(phone.auth)]:
        assert secret.removeprefix("whsec_") not in logged


async def test_an_endpoint_down_for_a_while_gets_it_once_back_with_one_id_per_notification(
    bus: Bus, notify: RunningService, receiver: Receiver
) -> None:
    await add_webhook(bus, receiver, "healthy", "acme")
    await add_webhook(bus, receiver, "flaky", "acme")
    receiver.hooks["flaky"].status = 503
    # a third endpoint is not even listening yet
    late = Receiver(free_port())
    await add_webhook(bus, late, "late", "acme")

    await create_request(bus, "acme")
    await eventually(lambda: sent_count(bus, 1))
    assert len(receiver.hooks["healthy"].received) == 1  # not held up by the others
    await eventually(lambda: as_true(receiver.hooks["flaky"].tries >= 2))
    receiver.hooks["flaky"].status = 204
    await late.start()
    try:
        sent = await eventually(lambda: sent_count(bus, 3))
    finally:
        await late.stop()
    for hook in (receiver.hooks["flaky"], late.hooks["late"]):
        assert len({r["webhook-id"] for r in hook.received}) == 1
    attempts = {s["data"]["channel_id"]: s["data"]["attempt"] for s in sent}
    assert sorted(attempts.values())[0] == 1 and max(attempts.values()) >= 2
    assert await events_of_type(bus, "NotificationFailed") == []


async def test_a_permanently_failing_endpoint_ends_in_failure_without_holding_up_others(
    bus: Bus, notify: RunningService, receiver: Receiver
) -> None:
    dead = await add_webhook(bus, receiver, "dead", None)
    receiver.hooks["dead"].status = 503
    await add_webhook(bus, receiver, "healthy", "acme")
    first, _, _ = await create_request(bus, "acme")
    await eventually(lambda: sent_count(bus, 1))
    second, _, _ = await create_request(bus, "acme")
    await eventually(lambda: sent_count(bus, 2))  # the second one did not wait for the dead one
    assert [r["body"]["data"]["request_id"] for r in receiver.hooks["healthy"].received] == [
        first,
        second,
    ]

    async def failed() -> list[dict[str, Any]] | None:
        got = await events_of_type(bus, "NotificationFailed")
        return got if len(got) == 2 else None

    for f in await eventually(failed):
        assert f["data"]["channel_id"] == dead and f["data"]["attempts"] == 4
        assert "503" in f["data"]["error"] and f["tenant"] == "_global"
    assert receiver.hooks["dead"].tries == 8
    info = await bus.js.stream_info("EPM_DLQ")
    assert info.state.messages == 2


async def test_a_removed_channel_gets_nothing_more(
    bus: Bus, notify: RunningService, receiver: Receiver
) -> None:
    gone = await add_webhook(bus, receiver, "gone", "acme")
    await add_webhook(bus, receiver, "kept", "acme")
    await call(bus.nc, SVC, "remove_channel", {"channel_id": gone}, ACME_ADMIN)
    await create_request(bus, "acme")
    await eventually(lambda: sent_count(bus, 1))
    assert len(receiver.hooks["kept"].received) == 1
    assert receiver.hooks["gone"].tries == 0
    listed = await call(bus.nc, SVC, "list_channels", {"tenant": "acme"}, ACME_ADMIN)
    assert gone not in [c["id"] for c in listed["items"]]


async def test_a_deleted_store_rebuilds_without_sending_again_and_keeps_what_is_pending(
    bus: Bus, notify: RunningService, notify_settings: Settings, receiver: Receiver
) -> None:
    await add_webhook(bus, receiver, "steady", "acme")
    await add_webhook(bus, receiver, "down", "acme")
    receiver.hooks["down"].status = 503
    await create_request(bus, "acme")
    await eventually(lambda: sent_count(bus, 1))
    await eventually(lambda: as_true(receiver.hooks["down"].tries >= 1))
    await notify.stop()
    for path in notify_settings.data_dir.glob("notify-svc-*"):
        path.unlink()
    receiver.hooks["down"].status = 204

    again = await start_service(DEFINITION, notify_settings)
    try:
        await eventually(lambda: sent_count(bus, 2))
        await create_request(bus, "acme", user="carol")
        sent = await eventually(lambda: sent_count(bus, 4))
    finally:
        await again.stop()
    steady = receiver.hooks["steady"].received
    assert [r["body"]["data"]["user"] for r in steady] == ["bob", "carol"]  # bob's not re-sent
    assert len({r["webhook-id"] for r in receiver.hooks["down"].received}) == 2
    assert len({s["data"]["notification_id"] for s in sent}) == len(sent) == 4


async def as_true(value: bool) -> bool:
    return value
