"""The reference agent with its own NATS user (the creds file enrollment left in its state
dir) on a nats-server with JWT auth: it reads its device channel, again and again, and
after a crash that left its consumer behind."""

from __future__ import annotations

from pathlib import Path

import nats
from epm_agent import Agent
from epm_agent.device_key import DeviceKey
from epm_agent.private_file import write_private_file
from epm_agent.state import Identity, StateDir
from epm_events.agent import RequestAnswer
from epm_events.streams import DEVICE
from epm_events.subjects import device_filter, device_inbox_prefix, device_subject
from epm_service.bus import Bus
from epm_service.natsauth import device_consumer_name, service_inbox_prefix
from nats.js.api import ConsumerConfig, DeliverPolicy

from tests.conftest import AuthNats

TENANT = "acme"
DEVICE_ID = "d-auth-1"


def enrolled_state(state_dir: Path, nats_auth_server: AuthNats) -> None:
    """What enrollment leaves behind: the device key, the identity and its own creds."""
    with StateDir(state_dir).open() as state:
        DeviceKey.generate().save(state.key_path)
        write_private_file(
            state.creds_path,
            nats_auth_server.keys.issuer().device_creds(TENANT, DEVICE_ID).encode(),
        )
        state.save_identity(
            Identity(
                device_id=DEVICE_ID,
                tenant=TENANT,
                hostname="pc-1",
                server_url="http://127.0.0.1:1",
                nats_url=nats_auth_server.url,
                inbox_prefix=device_inbox_prefix(TENANT, DEVICE_ID),
                subjects={},
                policy={"challenge_response": True},
                nats_creds_file=state.creds_path.name,
            )
        )


async def send_decision(nats_auth_server: AuthNats, request_id: str) -> None:
    nc = await nats.connect(
        nats_auth_server.url,
        user_credentials=nats_auth_server.service_creds("request-svc"),
        inbox_prefix=service_inbox_prefix("request-svc"),
    )
    try:
        answer = RequestAnswer(request_id=request_id, status="approved", decided_by="system")
        await nc.jetstream().publish(
            device_subject(TENANT, DEVICE_ID, "decision"),
            answer.model_dump_json().encode(),
            headers={"Nats-Msg-Id": f"decision-{request_id}"},
        )
    finally:
        await nc.close()


async def leave_a_consumer_behind(nats_auth_server: AuthNats) -> None:
    """A read that crashed: the device's named consumer, from sequence 1, never deleted."""
    nc = await nats.connect(
        nats_auth_server.url,
        user_credentials=nats_auth_server.device_creds(TENANT, DEVICE_ID),
        inbox_prefix=device_inbox_prefix(TENANT, DEVICE_ID),
    )
    try:
        sub = await nc.jetstream().subscribe(
            device_filter(TENANT, DEVICE_ID),
            stream=DEVICE.name,
            ordered_consumer=True,
            config=ConsumerConfig(
                name=device_consumer_name(TENANT, DEVICE_ID),
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=1,
            ),
        )
        await sub.next_msg(timeout=5)
        await sub.unsubscribe()
    finally:
        await nc.close()


async def test_the_agent_reads_its_channel_with_its_own_user_even_after_a_crash(
    auth_bus: Bus, nats_auth_server: AuthNats, tmp_path: Path
) -> None:
    enrolled_state(tmp_path / "agent", nats_auth_server)
    await send_decision(nats_auth_server, "r-1")
    agent = Agent(tmp_path / "agent")
    try:
        first = await agent.status()
        assert first.online
        assert await agent.status()  # a second read right after the first
    finally:
        await agent.disconnect()

    await send_decision(nats_auth_server, "r-2")
    await leave_a_consumer_behind(nats_auth_server)
    await send_decision(nats_auth_server, "r-3")
    agent = Agent(tmp_path / "agent")
    try:
        assert (await agent.status()).online
    finally:
        await agent.disconnect()
    with StateDir(tmp_path / "agent").open() as state:
        assert state.last_device_seq() == 3  # every decision read, none twice
