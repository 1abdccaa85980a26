"""Who may do what on NATS, enforced by a real nats-server in operator mode (JWT auth).

Devices, integrators and services each connect with the user JWT that
epm_service.natsauth gives their role; the server itself refuses the rest.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import nats
import nats.errors
import pytest
from epm_events.streams import DEVICE, EVENTS
from epm_events.subjects import DECIDING_NOTICE, UNDECIDED_NOTICE, device_inbox_prefix
from epm_service.bus import Bus
from epm_service.natsauth import (
    AuthKeys,
    device_consumer_name,
    integrator_inbox_prefix,
    service_inbox_prefix,
)
from nats.aio.client import Client, RawCredentials
from nats.js.api import ConsumerConfig

from tests.conftest import AuthNats


class Conn:
    """A client that records what the server told it (permission violations arrive async)."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: Client | None = None

    async def on_error(self, exc: Exception) -> None:
        self.errors.append(str(exc).lower())

    async def violation(self, what: str, deadline: float = 5.0) -> str:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            for e in self.errors:
                if "permissions violation" in e and what.lower() in e:
                    return e
            await asyncio.sleep(0.02)
        raise AssertionError(f"no permissions violation for {what!r}; server said {self.errors}")


Connect = Callable[..., Awaitable[tuple[Client, Conn]]]


@pytest.fixture
async def connect_as(nats_auth_server: AuthNats) -> AsyncIterator[Connect]:
    opened: list[Client] = []

    async def go(creds: str, inbox_prefix: str = "_INBOX") -> tuple[Client, Conn]:
        conn = Conn()
        nc = await nats.connect(
            nats_auth_server.url,
            user_credentials=creds,
            inbox_prefix=inbox_prefix,
            error_cb=conn.on_error,
            allow_reconnect=False,
            connect_timeout=3,
        )
        conn.nc = nc
        opened.append(nc)
        return nc, conn

    yield go
    for nc in opened:
        if not nc.is_closed:
            await nc.close()


async def device(
    nats_auth_server: AuthNats, connect_as: Connect, tenant: str, device_id: str
) -> tuple[Client, Conn]:
    return await connect_as(
        nats_auth_server.device_creds(tenant, device_id), device_inbox_prefix(tenant, device_id)
    )


async def refused(url: str, **options: object) -> bool:
    """True when the server does not let this client in (an error, or a closed client)."""
    try:
        nc = await nats.connect(
            url, allow_reconnect=False, connect_timeout=3, error_cb=_quiet, **options
        )
    except (nats.errors.Error, TimeoutError, OSError):
        return True
    connected = nc.is_connected
    await nc.close()
    return not connected


async def test_an_anonymous_connection_is_refused(nats_auth_server: AuthNats) -> None:
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(
            nats_auth_server.url, allow_reconnect=False, connect_timeout=3, error_cb=_quiet
        )
    assert await refused(nats_auth_server.url, user="epm", password="epm")


async def test_a_user_signed_by_a_foreign_account_key_is_refused(
    nats_auth_server: AuthNats,
) -> None:
    stranger = AuthKeys.create().issuer().device_creds("acme", "d-1")
    assert await refused(nats_auth_server.url, user_credentials=RawCredentials(stranger))


async def test_a_device_publishes_its_own_events_into_epm_agent(
    auth_bus: Bus, nats_auth_server: AuthNats, connect_as: Connect
) -> None:
    nc, _ = await device(nats_auth_server, connect_as, "acme", "d-1")
    ack = await nc.jetstream().publish("epm.agent.acme.d-1.ElevationRequested", b"{}")
    assert ack.stream == "EPM_AGENT"


@pytest.mark.parametrize(
    "subject",
    [
        "epm.agent.acme.d-2.ElevationRequested",  # another device of its tenant
        "epm.agent.globex.d-1.ElevationRequested",  # the same device id in another tenant
        "epm.device.acme.d-1.decision",  # forging what the server tells it
        "epm.evt.acme.request.r-1.Approved",  # a domain event
        "epm.rpc.approval-svc.decide",  # a technician's command
        "epm.devrpc.acme.d-2.self_generate_code",  # another device's command
    ],
)
async def test_a_device_publishing_outside_its_own_subjects_is_refused(
    auth_bus: Bus, nats_auth_server: AuthNats, connect_as: Connect, subject: str
) -> None:
    nc, conn = await device(nats_auth_server, connect_as, "acme", "d-1")
    await nc.publish(subject, b"{}")
    await conn.violation(f'publish to "{subject}"')
    # nothing reached the stream
    info = await auth_bus.js.stream_info("EPM_AGENT")
    assert info.state.messages == 0


async def test_a_device_reads_its_own_device_channel_again_and_again(
    auth_bus: Bus, nats_auth_server: AuthNats, connect_as: Connect
) -> None:
    svc, _ = await connect_as(
        nats_auth_server.service_creds("request-svc"), service_inbox_prefix("request-svc")
    )
    await svc.jetstream().publish("epm.device.acme.d-1.decision", b"one")
    await svc.jetstream().publish("epm.device.acme.d-2.decision", b"not yours")
    nc, conn = await device(nats_auth_server, connect_as, "acme", "d-1")
    js = nc.jetstream()
    name = device_consumer_name("acme", "d-1")
    for _ in range(3):  # the named consumer is deleted after each read, so the next may start
        sub = await js.subscribe(
            "epm.device.acme.d-1.>",
            stream=DEVICE.name,
            ordered_consumer=True,
            config=ConsumerConfig(name=name),
        )
        msg = await sub.next_msg(timeout=5)
        assert msg.data == b"one"
        assert msg.subject.startswith("epm.device.acme.d-1.")
        await sub.unsubscribe()
        await js.delete_consumer(DEVICE.name, name)
    assert not conn.errors


@pytest.mark.parametrize(
    "filter_subject",
    ["epm.device.acme.d-2.>", "epm.device.globex.d-1.>", "epm.device.>", "epm.device.acme.*.>"],
)
async def test_a_device_cannot_read_another_devices_channel(
    auth_bus: Bus, nats_auth_server: AuthNats, connect_as: Connect, filter_subject: str
) -> None:
    nc, conn = await device(nats_auth_server, connect_as, "acme", "d-1")
    with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
        await nc.jetstream(timeout=1).subscribe(
            filter_subject,
            stream=DEVICE.name,
            ordered_consumer=True,
            config=ConsumerConfig(name=device_consumer_name("acme", "d-1")),
        )
    await conn.violation("$js.api.consumer.create.epm_device")


async def test_a_device_cannot_create_an_unfiltered_or_pull_consumer(
    auth_bus: Bus, nats_auth_server: AuthNats, connect_as: Connect
) -> None:
    nc, conn = await device(nats_auth_server, connect_as, "acme", "d-1")
    js = nc.jetstream(timeout=1)
    with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
        await js.add_consumer(DEVICE.name, ConsumerConfig(), timeout=1)  # no name, no filter
    await conn.violation('"$js.api.consumer.create.epm_device"')
    with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
        await js.pull_subscribe("epm.device.acme.d-1.>", "mine", stream=DEVICE.name)
    await conn.violation("epm_device.mine")


async def test_a_device_cannot_listen_on_another_inbox_or_on_events(
    auth_bus: Bus, nats_auth_server: AuthNats, connect_as: Connect
) -> None:
    nc, conn = await device(nats_auth_server, connect_as, "acme", "d-1")
    for subject in ("_INBOX.acme.d-2.>", "_INBOX.>", "epm.evt.>", "epm.device.acme.d-1.>"):
        await nc.subscribe(subject)
        await conn.violation(f'subscription to "{subject}"')


async def test_an_integrator_reads_its_tenant_and_cannot_read_another(
    auth_bus: Bus, nats_auth_server: AuthNats, connect_as: Connect
) -> None:
    svc, _ = await connect_as(
        nats_auth_server.service_creds("gateway"), service_inbox_prefix("gateway")
    )
    for tenant in ("acme", "globex"):
        await svc.jetstream().publish(f"epm.evt.{tenant}.tenant.{tenant}.TenantCreated", b"{}")
    creds = nats_auth_server.keys.issuer().integrator_creds("tok-1", "acme")
    nc, conn = await connect_as(RawCredentials(creds), integrator_inbox_prefix("tok-1"))
    js = nc.jetstream(timeout=2)
    mine = await js.subscribe(
        "epm.evt.acme.>",
        stream=EVENTS.name,
        ordered_consumer=True,
        config=ConsumerConfig(name="feed"),
    )
    msg = await mine.next_msg(timeout=5)
    assert msg.subject == "epm.evt.acme.tenant.acme.TenantCreated"
    await mine.unsubscribe()

    with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
        await js.subscribe(
            "epm.evt.globex.>",
            stream=EVENTS.name,
            ordered_consumer=True,
            config=ConsumerConfig(name="feed2"),
        )
    await conn.violation("epm.evt.globex.>")
    with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
        await js.subscribe("epm.evt.>", stream=EVENTS.name, ordered_consumer=True)
    await conn.violation('"$js.api.consumer.create.epm_events"')
    # pulling from a service's durable consumer, or reading the stream directly, is refused too
    for subject in (
        f"$JS.API.CONSUMER.MSG.NEXT.{EVENTS.name}.audit-svc",
        f"$JS.API.STREAM.MSG.GET.{EVENTS.name}",
        f"$JS.API.DIRECT.GET.{EVENTS.name}",
    ):
        await nc.publish(subject, b"{}")
        await conn.violation(subject)


async def test_a_filter_in_the_subject_that_differs_from_the_config_is_refused(
    auth_bus: Bus, nats_auth_server: AuthNats, connect_as: Connect
) -> None:
    """The permission pins the subject's filter; the server pins the config to the subject."""
    creds = nats_auth_server.keys.issuer().integrator_creds("tok-2", "acme")
    nc, _ = await connect_as(RawCredentials(creds), integrator_inbox_prefix("tok-2"))
    request = (
        b'{"stream_name":"EPM_EVENTS","config":{"name":"sneaky","filter_subject":'
        b'"epm.evt.globex.>","deliver_subject":"_INBOX_integrator.tok-2.x","ack_policy":"none"}}'
    )
    reply = await nc.request(
        f"$JS.API.CONSUMER.CREATE.{EVENTS.name}.sneaky.epm.evt.acme.>", request, timeout=5
    )
    assert b'"error"' in reply.data


async def test_a_service_may_not_write_another_services_aggregates_or_streams(
    auth_bus: Bus, nats_auth_server: AuthNats, connect_as: Connect
) -> None:
    nc, conn = await connect_as(
        nats_auth_server.service_creds("request-svc"), service_inbox_prefix("request-svc")
    )
    await nc.publish("epm.evt.acme.tenant.acme.TenantCreated", b"{}")
    await conn.violation("epm.evt.acme.tenant.acme.tenantcreated")
    await nc.publish("$JS.API.STREAM.DELETE.EPM_EVENTS", b"")
    await conn.violation("$js.api.stream.delete.epm_events")
    ack = await nc.jetstream().publish("epm.evt.acme.request.r-1.RequestCreated", b"{}")
    assert ack.stream == "EPM_EVENTS"


async def _quiet(exc: Exception) -> None:
    """The refusal is the answer under test, not an error to print."""


@pytest.mark.parametrize("notice", [UNDECIDED_NOTICE, DECIDING_NOTICE])
async def test_only_approval_svc_gives_request_svc_its_notices(
    auth_bus: Bus, nats_auth_server: AuthNats, connect_as: Connect, notice: str
) -> None:
    listener, _ = await connect_as(
        nats_auth_server.service_creds("request-svc"), service_inbox_prefix("request-svc")
    )
    heard = await listener.subscribe(notice)
    await listener.flush()
    approval, _ = await connect_as(
        nats_auth_server.service_creds("approval-svc"), service_inbox_prefix("approval-svc")
    )
    await approval.publish(notice, b'{"request_id": "req-1"}')
    assert (await heard.next_msg(timeout=5)).data == b'{"request_id": "req-1"}'
    audit, conn = await connect_as(
        nats_auth_server.service_creds("audit-svc"), service_inbox_prefix("audit-svc")
    )
    await audit.publish(notice, b'{"request_id": "req-2"}')
    await conn.violation(notice)
    dev, dev_conn = await device(nats_auth_server, connect_as, "acme", "dev-1")
    await dev.publish(notice, b'{"request_id": "req-3"}')
    await dev_conn.violation(notice)
