"""notify-svc on a real nats-server, without EPM_NOTIFY_ALLOW_PRIVATE_WEBHOOKS and without
EPM_SMTP_URL: channels to loopback, private and link-local hosts are refused when added,
and a channel whose host turns out to be such an address (added while the setting was on,
or a name that resolves there) fails at delivery without a connection, its reason naming
no address. The webhook receiver listens on 127.0.0.1 and counts what reaches it."""

from __future__ import annotations

import base64
import contextlib
import secrets
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from epm_events.catalog import TenantCreated
from epm_notify.app import DEFINITION, HttpClient
from epm_notify.channels import generate_webhook_secret
from epm_notify.config import NotifySettings
from epm_notify.retry import Delivered, NotDelivered
from epm_notify.webhook import PublicOnlyResolver, WebhookSender, post
from epm_service.bus import Bus
from epm_service.deadletter import DETAIL
from epm_service.errors import CommandError
from epm_service.publisher import EventPublisher
from epm_service.rpc import call
from epm_service.runtime import RunningService, start_service
from epm_service.settings import Settings

from tests.integration.test_notify_svc import (
    ACME_ADMIN,
    ADMIN,
    PUBLIC_URL,
    SVC,
    Hook,
    Receiver,
    create_request,
    events_of_type,
    eventually,
)
from tests.unit.test_notify_private_targets import FixedAnswers

SETTING = "EPM_NOTIFY_ALLOW_PRIVATE_WEBHOOKS"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.stop()


@pytest.fixture
def strict_settings(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A production-like notify-svc: private addresses not allowed, no SMTP server."""
    settings.master_key = base64.b64encode(secrets.token_bytes(32)).decode()
    settings.public_url = PUBLIC_URL
    settings.smtp_url = None
    for name, value in {"RETRY_BASE": "0.1", "RETRY_CAP": "0.4", "MAX_ATTEMPTS": "4"}.items():
        monkeypatch.setenv(f"EPM_NOTIFY_{name}", value)
    monkeypatch.setenv(SETTING, "false")
    return settings


async def create_tenants(bus: Bus) -> None:
    pub = EventPublisher(bus.js, "/epm/test")
    for t in ("acme", "globex"):
        await pub.append(t, [TenantCreated(tenant_id=t, name=t.title(), created_by="test")], 0)


@pytest.fixture
async def strict_notify(bus: Bus, strict_settings: Settings) -> AsyncIterator[RunningService]:
    await create_tenants(bus)
    running = await start_service(DEFINITION, strict_settings)
    yield running
    with contextlib.suppress(Exception):
        await running.stop()


async def refused(bus: Bus, args: dict[str, Any], who: Any) -> CommandError:
    with pytest.raises(CommandError) as err:
        await call(bus.nc, SVC, "add_channel", args, who)
    return err.value


async def test_a_tenant_admin_cannot_point_a_webhook_at_loopback_private_or_metadata_hosts(
    bus: Bus, strict_notify: RunningService, receiver: Receiver
) -> None:
    for url in (
        receiver.url("/hooks/probe"),  # a service listening on notify-svc's loopback
        f"http://localhost:{receiver.port}/hooks/probe",
        "http://10.0.0.1:5432/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:4222/",
    ):
        err = await refused(bus, {"tenant": "acme", "kind": "webhook", "url": url}, ACME_ADMIN)
        assert err.status == 422, (url, err.detail)
        assert url in err.detail and f"{SETTING}=true" in err.detail
    # the same rule for MSP-wide channels
    err = await refused(bus, {"kind": "webhook", "url": receiver.url("/hooks/msp")}, ADMIN)
    assert err.status == 422 and SETTING in err.detail
    assert await events_of_type(bus, "NotificationChannelAdded") == []

    ok = {"tenant": "acme", "kind": "webhook", "url": "https://hooks.example.com/epm"}
    assert (await call(bus.nc, SVC, "add_channel", ok, ACME_ADMIN))["url"] == ok["url"]


async def test_an_email_channel_is_refused_while_notify_svc_has_no_smtp_server(
    bus: Bus, strict_notify: RunningService
) -> None:
    for args, who in (
        ({"tenant": "acme", "kind": "email", "to": "tech@acme.example"}, ACME_ADMIN),
        ({"kind": "email", "to": "msp@example.com"}, ADMIN),
    ):
        err = await refused(bus, args, who)
        assert err.status == 422
        assert "EPM_SMTP_URL" in err.detail and "smtp://host:25" in err.detail
    assert await events_of_type(bus, "NotificationChannelAdded") == []


async def test_a_channel_to_a_private_host_fails_at_delivery_without_connecting(
    bus: Bus,
    strict_settings: Settings,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Channels added while the setting was on (or before this check existed) stay in the
    store; with the setting off they are refused at each delivery, for good, at once."""
    await create_tenants(bus)
    monkeypatch.setenv(SETTING, "true")
    lab = await start_service(DEFINITION, strict_settings)
    try:
        ids = {}
        for name, url in (
            ("localhost", f"http://localhost:{receiver.port}/hooks/localhost"),
            ("literal", receiver.url("/hooks/literal")),
        ):
            args = {"tenant": "acme", "kind": "webhook", "url": url}
            ch = await call(bus.nc, SVC, "add_channel", args, ACME_ADMIN)
            receiver.hooks[name] = Hook(secret=ch["secret"])
            ids[name] = ch["id"]
    finally:
        await lab.stop()

    monkeypatch.setenv(SETTING, "false")
    strict = await start_service(DEFINITION, strict_settings)
    try:
        await create_request(bus, "acme")

        async def failed() -> list[dict[str, Any]] | None:
            got = await events_of_type(bus, "NotificationFailed")
            return got if len(got) == 2 else None

        errors = {f["data"]["channel_id"]: f["data"] for f in await eventually(failed)}
    finally:
        await strict.stop()
    assert receiver.hooks["localhost"].tries == receiver.hooks["literal"].tries == 0
    assert all(e["attempts"] == 1 for e in errors.values())  # permanent: not tried 4 times
    for name, why in (("localhost", "localhost (this machine"), ("literal", "loopback address")):
        error = errors[ids[name]]["error"]
        assert "refused without connecting" in error and why in error and SETTING in error
    assert await events_of_type(bus, "NotificationSent") == []

    sub = await bus.js.subscribe("epm.dlq.notify-svc", stream="EPM_DLQ", ordered_consumer=True)
    details = []
    for _ in range(2):
        msg = await sub.next_msg(timeout=5)
        details.append((msg.headers or {})[DETAIL])
    await sub.unsubscribe()
    assert all("refused without connecting" in d for d in details)
    assert not any("ClientConnectorError" in d for d in details)


# --- a host name is checked when it is resolved ------------------------------------------

BODY = b'{"id":"e1","type":"epm.RequestCreated.v1"}'


async def test_a_host_name_that_resolves_to_loopback_is_refused_before_connecting(
    receiver: Receiver,
) -> None:
    hook = receiver.hooks["x"] = Hook(secret=generate_webhook_secret())
    url = f"http://hooks.example.test:{receiver.port}/hooks/x"
    dns = FixedAnswers(["127.0.0.1"])  # the name's DNS points at notify-svc's own loopback
    # without the guard, that name reaches the receiver
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=dns)) as s:
        sent = await WebhookSender(s, allow_private=True).send(
            {"url": url}, hook.secret, "n1", BODY
        )
    assert isinstance(sent, Delivered) and hook.tries == 1

    guarded = aiohttp.TCPConnector(resolver=PublicOnlyResolver(dns))
    async with aiohttp.ClientSession(connector=guarded) as s:
        out = await WebhookSender(s).send({"url": url}, hook.secret, "n2", BODY)
    assert isinstance(out, NotDelivered)
    assert "does not resolve to a public address" in out.error and SETTING in out.error
    assert "127.0.0.1" not in out.error  # the tenant does not learn what the name resolves to
    assert hook.tries == 1


class NoSuchName(AbstractResolver):
    """A DNS server that knows no name (NXDOMAIN)."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        raise OSError(None, f"Name or service not known: {host}")

    async def close(self) -> None:
        pass


async def test_an_internal_name_and_a_name_that_does_not_exist_fail_alike(
    receiver: Receiver,
) -> None:
    """A tenant's channel failures must not tell which internal names exist: a name that
    resolves to a private address and one that does not resolve give the same error, and
    both are tried again as any unreachable host is."""
    url = f"http://hooks.example.test:{receiver.port}/hooks/z"
    secret = generate_webhook_secret()
    outcomes = []
    for dns in (PublicOnlyResolver(FixedAnswers(["10.1.2.3"])), PublicOnlyResolver(NoSuchName())):
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=dns)) as s:
            outcomes.append(await WebhookSender(s).send({"url": url}, secret, "n3", BODY))
    internal, missing = outcomes
    assert isinstance(internal, NotDelivered) and isinstance(missing, NotDelivered)
    assert (internal.error, internal.permanent) == (missing.error, missing.permanent)
    assert not internal.permanent
    assert "10.1.2.3" not in internal.error


async def test_the_service_http_session_refuses_names_that_resolve_to_loopback(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HttpClient resolves through the guard with the setting off, so even a URL past the
    literal check (allow_private=True here) does not reach a loopback listener."""
    hook = receiver.hooks["y"] = Hook(secret=generate_webhook_secret())
    url = f"http://localhost:{receiver.port}/hooks/y"
    for allowed, expected_tries in (("false", 0), ("true", 1)):
        monkeypatch.setenv(SETTING, allowed)
        http = HttpClient(NotifySettings())
        await http.start()
        try:
            out = await post(http.session, url, BODY, {}, "webhook", allow_private=True)
        finally:
            await http.stop()
        assert hook.tries == expected_tries, (allowed, out)
        if allowed == "false":
            assert (
                isinstance(out, NotDelivered)
                and "does not resolve to a public address" in out.error
            )
    assert receiver.errors  # the unsigned POST that got through was answered 401
