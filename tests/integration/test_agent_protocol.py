"""The agent's side of the protocol on a real nats-server, against a tiny stand-in for
request-svc that does what the contract says: verify the Epm-Signature with the enrolled
public key, derive the request id from the message id, answer on Epm-Reply-To, and later
send decisions on EPM_DEVICE."""

from __future__ import annotations

import asyncio
import base64
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import orjson
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from epm_agent import Agent, ServerUnreachable
from epm_agent.device_key import DeviceKey
from epm_agent.state import Identity, LocalRequest, StateDir
from epm_events.agent import REPLY_HEADER, SIGNATURE_HEADER, RequestAnswer, signing_bytes
from epm_events.ids import approval_used_id, new_event_id, request_id_for
from epm_events.streams import AGENT
from epm_events.subjects import ALL_AGENT, device_inbox_prefix, device_subject
from epm_service.bus import Bus
from epm_service.natsserver import NatsServer, free_port
from nats.aio.msg import Msg

TENANT = "acme"
DEVICE = "d-agent-1"
SHA = "ab" * 32

Decide = Callable[[str, dict[str, object]], RequestAnswer]


def enroll_locally(state_dir: Path, nats_url: str) -> Ed25519PublicKey:
    """What a successful enrollment leaves behind, without the HTTP edge (tested apart)."""
    key = DeviceKey.generate()
    with StateDir(state_dir).open() as state:
        key.save(state.key_path)
        state.save_identity(
            Identity(
                device_id=DEVICE,
                tenant=TENANT,
                hostname="pc-1",
                server_url="http://127.0.0.1:1",
                nats_url=nats_url,
                inbox_prefix=device_inbox_prefix(TENANT, DEVICE),
                subjects={},
                policy={"challenge_response": True},
            )
        )
    return key.public_key


@dataclass
class Received:
    subject: str
    msg_id: str
    body: bytes
    headers: dict[str, str]


@dataclass
class RequestSvcStandIn:
    """Consumes EPM_AGENT like request-svc; answers only what it could verify."""

    bus: Bus
    public_key: Ed25519PublicKey
    decide: Decide
    received: list[Received] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    async def start(self) -> None:
        await self.bus.js.subscribe(ALL_AGENT, stream=AGENT.name, cb=self._on_message)

    async def _on_message(self, msg: Msg) -> None:
        headers = dict(msg.headers or {})
        msg_id = headers.get("Nats-Msg-Id", "")
        got = Received(msg.subject, msg_id, msg.data, headers)
        self.received.append(got)
        if not verifies(self.public_key, got):
            self.refused.append(msg_id)
            return
        data = orjson.loads(msg.data)["data"]
        answer = self.decide(request_id_for(msg_id), data)
        if reply_to := headers.get(REPLY_HEADER):
            await self.bus.nc.publish(reply_to, answer.model_dump_json().encode())


def verifies(public_key: Ed25519PublicKey, got: Received) -> bool:
    signature = base64.b64decode(got.headers.get(SIGNATURE_HEADER, ""))
    try:
        public_key.verify(signature, signing_bytes(got.subject, got.msg_id, got.body))
    except InvalidSignature:
        return False
    return True


async def send_decision(bus: Bus, answer: RequestAnswer, msg_id: str | None = None) -> None:
    await bus.js.publish(
        device_subject(TENANT, DEVICE, "decision"),
        answer.model_dump_json().encode(),
        headers={"Nats-Msg-Id": msg_id or new_event_id()},
    )


async def until(check: Callable[[], Awaitable[bool] | bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if await result if isinstance(result, Awaitable) else result:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met before the deadline")


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "agent"


@pytest.fixture
async def agent(bus: Bus, state_dir: Path, nats_server: NatsServer) -> AsyncIterator[Agent]:
    enroll_locally(state_dir, nats_server.url)
    a = Agent(state_dir, answer_timeout=2.0)
    yield a
    await a.close()


def public_key_of(state_dir: Path) -> Ed25519PublicKey:
    return DeviceKey.load(StateDir(state_dir).key_path).public_key


def by_rule(request_id: str, data: dict[str, object]) -> RequestAnswer:
    return RequestAnswer(
        request_id=request_id, status="approved", decided_by="rule:r-1", rule_id="r-1"
    )


def left_open(request_id: str, data: dict[str, object]) -> RequestAnswer:
    return RequestAnswer(request_id=request_id, status="open")


async def test_request_is_signed_by_the_enrolled_key_and_a_tampered_body_fails(
    bus: Bus, agent: Agent, state_dir: Path, tmp_path: Path
) -> None:
    exe = tmp_path / "setup.exe"
    exe.write_bytes(b"MZ pretend installer")
    svc = RequestSvcStandIn(bus, public_key_of(state_dir), left_open)
    await svc.start()

    outcome = await agent.request(str(exe), user="alice", reason="install the driver")

    assert len(svc.received) == 1 and not svc.refused
    got = svc.received[0]
    assert got.subject == f"epm.agent.{TENANT}.{DEVICE}.ElevationRequested"
    assert outcome.request_id == request_id_for(got.msg_id)
    envelope = orjson.loads(got.body)
    assert envelope["id"] == got.msg_id
    assert envelope["type"] == "epm.ElevationRequested.v1"
    assert envelope["source"] == f"/agents/{TENANT}/{DEVICE}"
    assert envelope["data"]["app"]["file_name"] == "setup.exe"
    assert got.headers[REPLY_HEADER].startswith(device_inbox_prefix(TENANT, DEVICE) + ".")
    tampered = Received(
        got.subject, got.msg_id, got.body.replace(b"alice", b"mallory"), got.headers
    )
    assert not verifies(svc.public_key, tampered)
    other_device = Received(
        got.subject.replace(DEVICE, "d-other"), got.msg_id, got.body, got.headers
    )
    assert not verifies(svc.public_key, other_device)


async def test_rule_decision_comes_back_on_the_same_round_trip(
    bus: Bus, agent: Agent, state_dir: Path
) -> None:
    await RequestSvcStandIn(bus, public_key_of(state_dir), by_rule).start()

    outcome = await agent.request(
        "C:/Tools/tool.exe", sha256=SHA, publisher="Acme", user="alice", reason="update"
    )

    assert (outcome.status, outcome.decided_by) == ("approved", "rule:r-1")
    status = await agent.status()
    assert status.online
    assert [(r.request_id, r.status) for r in status.requests] == [(outcome.request_id, "approved")]


async def test_request_is_open_when_nobody_answers(
    bus: Bus, state_dir: Path, nats_server: NatsServer
) -> None:
    enroll_locally(state_dir, nats_server.url)
    async with Agent(state_dir, answer_timeout=0.3) as agent:
        outcome = await agent.request("/usr/bin/tool", sha256=SHA, user="bob", reason="x")

    assert outcome.status == "open" and outcome.decided_by is None
    stored = await bus.js.get_last_msg(
        AGENT.name, f"epm.agent.{TENANT}.{DEVICE}.ElevationRequested"
    )
    assert outcome.request_id == request_id_for(stored.headers["Nats-Msg-Id"])


def technician_decides(
    bus: Bus,
    svc: RequestSvcStandIn,
    status: Literal["approved", "denied"],
    scope: str | None = None,
) -> asyncio.Task[None]:
    """Technician tom, who decides the first request the stand-in receives, on EPM_DEVICE."""

    async def decide() -> None:
        await until(lambda: bool(svc.received))
        request_id = request_id_for(svc.received[0].msg_id)
        await send_decision(
            bus,
            RequestAnswer(
                request_id=request_id, status=status, decided_by="technician:tom", scope=scope
            ),
        )

    return asyncio.create_task(decide())


async def test_request_wait_picks_up_a_technician_decision(
    bus: Bus, agent: Agent, state_dir: Path
) -> None:
    svc = RequestSvcStandIn(bus, public_key_of(state_dir), left_open)
    await svc.start()
    decided = technician_decides(bus, svc, "denied")
    outcome = await agent.request(
        "/usr/bin/tool", sha256=SHA, user="alice", reason="x", wait_seconds=20
    )
    await decided

    assert (outcome.status, outcome.decided_by) == ("denied", "technician:tom")


def uses(svc: RequestSvcStandIn) -> list[Received]:
    return [r for r in svc.received if r.subject.endswith(".ApprovalUsed")]


async def test_a_once_approval_the_user_waited_for_is_reported_used_once_signed(
    bus: Bus, agent: Agent, state_dir: Path
) -> None:
    svc = RequestSvcStandIn(bus, public_key_of(state_dir), left_open)
    await svc.start()
    decided = technician_decides(bus, svc, "approved", scope="once")
    outcome = await agent.request(
        "/usr/bin/tool", sha256=SHA, user="alice", reason="x", wait_seconds=20
    )
    await decided
    assert outcome.status == "approved"

    await until(lambda: bool(uses(svc)))
    [used] = uses(svc)
    assert used.msg_id == approval_used_id(outcome.request_id)
    assert orjson.loads(used.body)["data"] == {"request_id": outcome.request_id}
    assert used.msg_id not in svc.refused  # signed by the device key
    await agent.status()  # another contact: nothing is reported again
    await asyncio.sleep(0.3)
    assert len(uses(svc)) == 1


async def test_approvals_that_spend_no_grant_are_not_reported(
    bus: Bus, agent: Agent, state_dir: Path
) -> None:
    """A rule's approval, and one made by a grant (spent when it was made)."""
    answers = iter(["rule:r-1", "grant:req-1"])

    def decide(request_id: str, data: dict[str, object]) -> RequestAnswer:
        by = next(answers)
        return RequestAnswer(
            request_id=request_id,
            status="approved",
            decided_by=by,
            scope="tenant" if by.startswith("rule:") else "once",
        )

    svc = RequestSvcStandIn(bus, public_key_of(state_dir), decide)
    await svc.start()
    for _ in range(2):
        outcome = await agent.request("/usr/bin/tool", sha256=SHA, user="alice", reason="x")
        assert outcome.status == "approved"
    await agent.status()
    await asyncio.sleep(0.3)
    assert uses(svc) == []


async def test_a_use_not_reported_yet_goes_at_the_next_contact(
    bus: Bus, agent: Agent, state_dir: Path
) -> None:
    """The server was gone when the user used the approval: the next status reports it."""
    svc = RequestSvcStandIn(bus, public_key_of(state_dir), left_open)
    with StateDir(state_dir).open() as state:
        state.record_request(
            LocalRequest(
                request_id="req-used-offline",
                status="approved",
                created_at="2026-12-07T10:00:00Z",
                updated_at="2026-12-07T10:00:00Z",
                decided_by="technician:tom",
                scope="once",
            )
        )
        state.mark_used("req-used-offline")
    await svc.start()
    await agent.status()
    await until(lambda: bool(uses(svc)))
    assert [u.msg_id for u in uses(svc)] == [approval_used_id("req-used-offline")]
    with StateDir(state_dir).open() as state:
        assert state.unreported_uses() == []


async def test_decision_sent_while_offline_is_seen_at_the_next_status(
    bus: Bus, agent: Agent, state_dir: Path
) -> None:
    await RequestSvcStandIn(bus, public_key_of(state_dir), left_open).start()
    outcome = await agent.request("/usr/bin/tool", sha256=SHA, user="alice", reason="x")
    assert outcome.status == "open"
    await agent.close()  # the machine goes away

    await send_decision(
        bus,
        RequestAnswer(
            request_id=outcome.request_id, status="approved", decided_by="technician:tom"
        ),
    )

    async with Agent(state_dir, offline=True) as offline:
        seen_offline = await offline.status()
    assert not seen_offline.online
    assert [r.status for r in seen_offline.requests] == ["open"]

    async with Agent(state_dir) as back:
        seen = await back.status()
    assert seen.online
    assert [(r.request_id, r.status, r.decided_by) for r in seen.requests] == [
        (outcome.request_id, "approved", "technician:tom")
    ]


async def test_a_decision_is_never_applied_twice(bus: Bus, agent: Agent, state_dir: Path) -> None:
    await RequestSvcStandIn(bus, public_key_of(state_dir), left_open).start()
    outcome = await agent.request("/usr/bin/tool", sha256=SHA, user="alice", reason="x")
    approved = RequestAnswer(
        request_id=outcome.request_id, status="approved", decided_by="technician:tom"
    )
    await send_decision(bus, approved, msg_id="decision-1")

    first = await agent.sync_device_channel()
    assert [u.applied for u in first] == [True]

    # the same decision re-sent after the duplicate window, then a late expiry: both read past
    await send_decision(bus, approved, msg_id="decision-1-again")
    await send_decision(bus, RequestAnswer(request_id=outcome.request_id, status="expired"))
    again = await agent.sync_device_channel()
    assert [u.applied for u in again] == [False, False]
    assert await agent.sync_device_channel() == []

    with StateDir(state_dir).open(create=False) as state:
        assert state.device_messages_applied(outcome.request_id) == 1
        request = state.request(outcome.request_id)
    assert request is not None and (request.status, request.decided_by) == (
        "approved",
        "technician:tom",
    )


async def test_status_is_offline_when_nats_is_unreachable(tmp_path: Path) -> None:
    state_dir = tmp_path / "agent"
    enroll_locally(state_dir, f"nats://127.0.0.1:{free_port()}")
    async with Agent(state_dir, connect_timeout=1.0) as agent:
        status = await agent.status()
        assert (status.online, status.device_id, status.tenant) == (False, DEVICE, TENANT)
        assert status.policy == {"challenge_response": True}
        with pytest.raises(ServerUnreachable, match="cannot be reached"):
            await agent.request("/usr/bin/tool", sha256=SHA, user="alice", reason="x")


async def test_cli_request_prints_the_rule_decision_as_one_json_object(
    bus: Bus, agent: Agent, state_dir: Path
) -> None:
    await RequestSvcStandIn(bus, public_key_of(state_dir), by_rule).start()

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "epm_agent.cli",
        "request",
        "--exe",
        "/opt/tool",
        "--sha256",
        SHA,
        "--user",
        "alice",
        "--reason",
        "update",
        "--state-dir",
        str(state_dir),
        "--json",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()

    assert proc.returncode == 0
    answer = orjson.loads(out)
    assert answer["status"] == "approved" and answer["decided_by"] == "rule:r-1"
    assert answer["request_id"].startswith("req-")


async def test_status_shows_the_offline_policy_the_server_sent_last(bus: Bus, agent: Agent) -> None:
    policy = {"challenge_response": False, "app_codes": True, "admin_codes": True}
    await bus.js.publish(
        device_subject(TENANT, DEVICE, "policy"),
        orjson.dumps({"tenant": TENANT, "policy": policy, "seq": 7}),
        headers={"Nats-Msg-Id": new_event_id()},
    )

    status = await agent.status()

    assert status.policy == policy
    async with Agent(agent.state.path, offline=True) as offline:
        assert (await offline.status()).policy == policy
