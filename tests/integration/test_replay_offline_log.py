"""Offline log replay on a real nats-server: the agent SDK uploads, request-svc (in process)
accepts each (device, sequence) once, and every attempt to hide or repeat something
raises SecurityAlertRaised with its evidence while the good records still go through."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from epm_agent.agent import Agent
from epm_agent.device_key import DeviceKey
from epm_agent.elevation import signed_message
from epm_agent.errors import ServerUnreachable
from epm_agent.offline_log import LogRecord
from epm_agent.offline_state import OfflineState, append_record
from epm_agent.state import Identity, StateDir
from epm_agent.upload import batch_message
from epm_events.agent import OfflineLogBatch, OfflineLogEntry
from epm_events.catalog import TenantCreated
from epm_events.codec import decode
from epm_events.streams import EVENTS
from epm_events.subjects import device_subject
from epm_request.app import DEFINITION
from epm_request.intake import AgentIntake
from epm_service.bus import Bus, connect
from epm_service.natsfast import parse_ack_reply
from epm_service.principal import Principal
from epm_service.publisher import EXPECTED_LAST_SUBJECT_SEQ, EventPublisher
from epm_service.rpc import call
from epm_service.runtime import RunningService, start_service
from epm_service.settings import Settings
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

ADMIN = Principal(token_id="t0", name="root", role="msp_admin", tenant=None)
DEVICE_TIME = datetime(2026, 3, 1, 8, 30, tzinfo=UTC)
RECORD_TYPES = ("OfflineCodeRedeemed", "ElevationPerformed", "AdminSessionStarted")


# --- fixtures and helpers ---------------------------------------------------------------


class Services:
    """request-svc replicas on the session's nats-server, each with its own data dir."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.running: list[RunningService] = []

    async def start(self, data_dir: Path | None = None) -> RunningService:
        settings = self.settings.model_copy(update={"data_dir": data_dir or self.settings.data_dir})
        running = await start_service(DEFINITION, settings)
        self.running.append(running)
        return running

    async def stop(self, running: RunningService) -> None:
        self.running.remove(running)
        await running.stop()

    async def stop_all(self) -> None:
        for running in list(self.running):
            await self.stop(running)


async def acme_with_request_svc(bus: Bus, settings: Settings, replay_workers: int) -> Services:
    """Tenant acme, and one request-svc preparing uploads in ``replay_workers`` processes."""
    pub = EventPublisher(bus.js, "/epm/test")
    await pub.append("acme", [TenantCreated(tenant_id="acme", name="Acme", created_by="t")], 0)
    svc = Services(settings.model_copy(update={"replay_workers": replay_workers}))
    await svc.start()
    return svc


@pytest.fixture
async def services(bus: Bus, settings: Settings) -> AsyncIterator[Services]:
    svc = await acme_with_request_svc(bus, settings, replay_workers=1)  # as deployed
    yield svc
    await svc.stop_all()


async def enrolled_agent(bus: Bus, settings: Settings, root: Path, name: str) -> Agent:
    """An agent state dir enrolled through request-svc's own command (no gateway needed)."""
    created = await call(
        bus.nc, "request-svc", "create_enrollment_token", {"tenant": "acme"}, ADMIN
    )
    key = DeviceKey.generate()
    answer = await call(
        bus.nc,
        "request-svc",
        "enroll",
        {
            "enrollment_token": created["token"],
            "public_key": key.public_key_b64(),
            "hostname": name,
        },
        ADMIN,
    )
    with StateDir(root / name).open() as state:
        key.save(state.key_path)
        state.save_identity(
            Identity(
                device_id=answer["device_id"],
                tenant="acme",
                hostname=name,
                server_url="http://127.0.0.1:9",
                nats_url=settings.nats_url,
                inbox_prefix=answer["inbox_prefix"],
                subjects=answer["subjects"],
                policy=answer["policy"],
            )
        )
    return Agent(root / name, answer_timeout=0.5)


def device_of(agent: Agent) -> str:
    identity = agent.identity
    assert identity is not None
    return identity.device_id


def write_elevations(agent: Agent, count: int, user: str = "bob") -> None:
    device = device_of(agent)  # opens the state
    with agent.state.transaction() as db:
        for i in range(count):
            append_record(
                db,
                "ElevationPerformed",
                device,
                DEVICE_TIME + timedelta(seconds=i),
                {"user": user, "app": {"file_name": f"tool{i}.exe", "sha256": f"{i:064x}"}},
            )


def write_redemption(agent: Agent, counter: int, code_hash: str) -> None:
    device = device_of(agent)  # opens the state
    with agent.state.transaction() as db:
        append_record(
            db,
            "OfflineCodeRedeemed",
            device,
            DEVICE_TIME,
            {
                "kind": "access_code",
                "code_ref": f"access_code:v1:{counter}",
                "code_hash": code_hash,
                "grant": "app",
                "user": "bob",
            },
        )


def log_of(agent: Agent) -> list[LogRecord]:
    return agent.offline_access().tables.log()


async def stored_events(bus: Bus, filter_subject: str) -> list[tuple[int, int, dict[str, Any]]]:
    """(stream seq, JetStream timestamp ns, CloudEvent) of every event matching the filter."""
    psub = await bus.js.pull_subscribe(
        filter_subject,
        stream=EVENTS.name,
        config=ConsumerConfig(
            ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, mem_storage=True
        ),
    )
    try:
        pending = (await psub.consumer_info()).num_pending or 0
        out: list[tuple[int, int, dict[str, Any]]] = []
        while len(out) < pending:
            for msg in await psub.fetch(min(pending - len(out), 500), timeout=5):
                seq, _, ts, _ = parse_ack_reply(msg.reply)
                out.append((seq, ts, decode(msg.data).model_dump(mode="json")))
        return out
    finally:
        with contextlib.suppress(Exception):
            await psub.unsubscribe()


async def records_of(bus: Bus, device: str) -> Counter[int]:
    """How many times each device_seq of the device is in EPM_EVENTS."""
    events = await stored_events(bus, f"epm.evt.acme.device.{device}.*")
    return Counter(
        e["data"]["device_seq"]
        for _, _, e in events
        if e["type"].split(".")[1] in RECORD_TYPES or e["type"] == "epm.AdminSessionEnded.v1"
    )


async def alerts(bus: Bus) -> list[dict[str, Any]]:
    return [e["data"] for _, _, e in await stored_events(bus, "epm.evt.acme.alert.>")]


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout:g}s (last: {result!r})")
        await asyncio.sleep(0.05)


async def exactly_once(bus: Bus, device: str, seqs: range) -> None:
    async def settled() -> Counter[int] | None:
        counts = await records_of(bus, device)
        return counts if set(counts) >= set(seqs) else None

    counts = await eventually(settled)
    assert counts == Counter({s: 1 for s in seqs}), counts


async def publish_batch(
    bus: Bus, agent: Agent, records: list[LogRecord], *, fresh_id: bool = True
) -> str:
    """Upload records as the agent would, with a new message id (a re-send outside the
    stream's duplicate window looks exactly like this); wait for request-svc's ReplayAck."""
    identity = agent.identity
    assert identity is not None
    key = DeviceKey.load(agent.state.key_path)
    if fresh_id:
        message = signed_message(
            key,
            tenant="acme",
            device_id=identity.device_id,
            message=batch_of(records),
            msg_id=str(uuid.uuid4()),
        )
    else:
        message = batch_message(key, tenant="acme", device_id=identity.device_id, records=records)
    return await publish_and_wait(
        bus, identity.device_id, message.subject, message.body, message.headers
    )


def batch_of(records: list[LogRecord]) -> OfflineLogBatch:
    return OfflineLogBatch(
        first_seq=records[0].seq,
        last_seq=records[-1].seq,
        chain_head=records[-1].hash,
        records=[
            OfflineLogEntry(
                type=r.type, data=r.record["data"], prev_hash=r.prev_hash, record_hash=r.hash
            )
            for r in records
        ],
    )


async def publish_and_wait(
    bus: Bus, device: str, subject: str, body: bytes, headers: dict[str, str]
) -> str:
    acks = await bus.nc.subscribe(device_subject("acme", device, "replay"))
    try:
        await bus.js.publish(subject, body, headers=headers)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            msg = await acks.next_msg(timeout=deadline - time.monotonic())
            if orjson.loads(msg.data)["batch_id"] == headers["Nats-Msg-Id"]:
                return headers["Nats-Msg-Id"]
        raise AssertionError("request-svc never confirmed the batch")
    finally:
        await acks.unsubscribe()


# --- exactly once ------------------------------------------------------------------------


async def test_sync_uploads_each_record_once_with_device_time_and_time_received(
    bus: Bus, settings: Settings, services: Services, tmp_path: Path
) -> None:
    agent = await enrolled_agent(bus, settings, tmp_path, "pc-1")
    write_elevations(agent, 250)
    async with agent:
        result = await agent.sync(wait_seconds=20)
        assert result.as_json() == {"sent": 250, "confirmed": 250, "pending": 0}
        again = await agent.sync(wait_seconds=1)
        assert again.as_json() == {"sent": 0, "confirmed": 250, "pending": 0}
    device = device_of(agent)
    await exactly_once(bus, device, range(1, 251))
    events = await stored_events(bus, f"epm.evt.acme.device.{device}.ElevationPerformed")
    _, stored_ns, first = min(events, key=lambda e: e[2]["data"]["device_seq"])
    assert first["data"]["device_time"].startswith("2026-03-01T08:30:00")
    received = datetime.fromisoformat(first["time"])
    assert abs(received.timestamp() - stored_ns / 1e9) < 30  # received now, not on the device
    assert received - DEVICE_TIME > timedelta(days=1) or received < DEVICE_TIME
    assert first["data"]["record_hash"] == log_of(agent)[0].hash
    # as every CloudEvent: time in UTC with "Z"; the source is the device it happened on
    assert first["time"].endswith("Z") and first["source"] == f"/agents/acme/{device}"


async def test_an_upload_prepared_beforehand_sends_what_was_signed_and_marks_it_sent_on_ack(
    bus: Bus, settings: Settings, services: Services, tmp_path: Path
) -> None:
    """``prepare_upload`` is the device's own part (read, cut, sign): it sends and marks
    nothing; ``upload`` with it sends those batches and marks them once acknowledged."""
    agent = await enrolled_agent(bus, settings, tmp_path, "pc-1")
    async with agent:
        identity = agent.identity
        assert identity is not None
        nothing = agent.prepare_upload(identity)
        assert nothing.batches == [] and nothing.last
        write_elevations(agent, 30)
        prepared = agent.prepare_upload(identity)
        assert [len(chunk) for chunk, _ in prepared.batches] == [30] and prepared.last
        assert OfflineState(agent.state).upload_counts()[:2] == (30, 0)
        connected = await agent._connect(identity)
        assert connected is not None
        assert await agent.upload(connected, identity, prepared) == 30
        assert OfflineState(agent.state).upload_counts()[:2] == (30, 30)
        assert await agent.upload(connected, identity) == 0
    await exactly_once(bus, device_of(agent), range(1, 31))


async def test_a_sent_round_is_marked_only_by_mark_sent_with_what_the_stream_acknowledged(
    bus: Bus, settings: Settings, services: Services, tmp_path: Path
) -> None:
    """``send_upload`` publishes and collects the acknowledged batches; ``mark_sent`` is the
    device's bookkeeping after it (the replay storm's devices do it after its clock)."""
    agent = await enrolled_agent(bus, settings, tmp_path, "pc-1")
    async with agent:
        identity = agent.identity
        assert identity is not None
        write_elevations(agent, 250)
        prepared = agent.prepare_upload(identity)
        connected = await agent._connect(identity)
        assert connected is not None
        acked: list[list[LogRecord]] = []
        await agent.send_upload(connected, prepared, acked)
        assert [len(chunk) for chunk in acked] == [len(c) for c, _ in prepared.batches]
        assert OfflineState(agent.state).upload_counts()[:2] == (250, 0)
        await exactly_once(bus, device_of(agent), range(1, 251))
        assert agent.mark_sent(acked) == 250
        assert OfflineState(agent.state).upload_counts()[:2] == (250, 250)
        assert agent.mark_sent([]) == 0


async def test_a_batch_replayed_twice_and_in_parallel_by_two_replicas_is_accepted_once(
    bus: Bus, settings: Settings, services: Services, tmp_path: Path
) -> None:
    await services.start(tmp_path / "replica-2")
    agent = await enrolled_agent(bus, settings, tmp_path, "pc-1")
    write_elevations(agent, 120)
    records = log_of(agent)
    other = await connect(settings, name="second-agent-connection")
    try:
        await asyncio.gather(
            publish_batch(bus, agent, records),
            publish_batch(other, agent, records),
            publish_batch(bus, agent, records[:60]),
            publish_batch(other, agent, records[:60]),
        )
        await publish_batch(other, agent, records[60:])
        await publish_batch(bus, agent, records)  # and once more, later
    finally:
        await other.close()
    await exactly_once(bus, device_of(agent), range(1, 121))
    assert await alerts(bus) == []


async def test_replay_after_a_restart_and_after_losing_the_sqlite_is_not_duplicated(
    bus: Bus, settings: Settings, services: Services, tmp_path: Path
) -> None:
    agent = await enrolled_agent(bus, settings, tmp_path, "pc-1")
    write_elevations(agent, 50)
    records = log_of(agent)
    await publish_batch(bus, agent, records)
    await services.stop(services.running[0])
    await services.start()  # same sqlite
    await publish_batch(bus, agent, records)
    await services.stop(services.running[0])
    for db in settings.data_dir.glob("request-svc-*"):
        db.unlink()
    await services.start()  # rebuilt from the stream
    write_elevations(agent, 10)
    await publish_batch(bus, agent, log_of(agent))
    await exactly_once(bus, device_of(agent), range(1, 61))


async def test_an_upload_cut_by_a_lost_connection_resumes_without_loss_or_duplicates(
    bus: Bus,
    settings: Settings,
    services: Services,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = await enrolled_agent(bus, settings, tmp_path, "pc-1")
    write_elevations(agent, 700)
    monkeypatch.setattr("epm_agent.agent.UPLOAD_READ", 250)  # rounds of 250 records
    marked = 0
    real_mark_sent = OfflineState.mark_sent

    def lose_the_server_in_round_two(self: OfflineState, *args: Any) -> None:
        nonlocal marked
        marked += 1
        if marked == 2:  # round two reached the stream, but the agent never heard
            assert agent._bus is not None
            asyncio.get_running_loop().create_task(agent._bus.nc.close())
            raise ServerUnreachable("connection lost")
        real_mark_sent(self, *args)

    async with agent:
        monkeypatch.setattr(OfflineState, "mark_sent", lose_the_server_in_round_two)
        with pytest.raises(ServerUnreachable):
            await agent.sync(wait_seconds=0)
        monkeypatch.setattr(OfflineState, "mark_sent", real_mark_sent)
        records, sent, _ = OfflineState(agent.state).upload_counts()
        assert (records, sent) == (700, 250)
        await agent.disconnect()
        result = await agent.sync(wait_seconds=20)
    assert result.sent == 450 and result.pending == 0 and result.confirmed == 700
    await exactly_once(bus, device_of(agent), range(1, 701))


async def test_a_record_whose_publish_is_never_acknowledged_does_not_stall_the_device(
    bus: Bus,
    settings: Settings,
    services: Services,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """nats-py never fails the future of a publish lost with a killed server (found by the
    fault suite: a device's replays stopped for good when nats-server was killed mid-replay).
    The replay gives up after PUBLISH_ACK_TIMEOUT, the batch comes again, and the device's
    records are each in the stream once; its next upload goes through too."""
    agent = await enrolled_agent(bus, settings, tmp_path, "pc-1")
    monkeypatch.setattr("epm_request.replay.PUBLISH_ACK_TIMEOUT", 0.5)
    nc = services.running[0].ctx.bus.nc
    real_send = nc._send_command
    lost: list[bytes] = []

    async def lossy(cmd: bytes, priority: bool = False) -> None:
        """Drops the first record after a batch's first from what goes on the wire (a set's
        records are written as one buffer of HPUB commands: only that one goes missing)."""
        if not lost and cmd.startswith(b"HPUB epm.evt.acme.device."):
            line, _, rest = cmd.partition(b"\r\n")
            total = int(line.split()[-1])
            if EXPECTED_LAST_SUBJECT_SEQ.encode() not in rest[:total]:
                lost.append(line)  # never sent, never acknowledged
                cmd = rest[total + 2 :]
        if cmd:
            await real_send(cmd, priority)

    monkeypatch.setattr(nc, "_send_command", lossy)
    write_elevations(agent, 10)
    async with agent:
        first = await agent.sync(wait_seconds=20)
        assert lost and first.pending == 0 and first.confirmed == 10
        write_elevations(agent, 5)
        second = await agent.sync(wait_seconds=20)
        assert second.pending == 0 and second.confirmed == 15
    await exactly_once(bus, device_of(agent), range(1, 16))
    assert await alerts(bus) == []


# --- alerts: the rest of the batch still goes through --------------------------------------


async def test_a_gap_raises_an_alert_and_the_records_after_it_are_accepted(
    bus: Bus, settings: Settings, services: Services, tmp_path: Path
) -> None:
    agent = await enrolled_agent(bus, settings, tmp_path, "pc-1")
    write_elevations(agent, 10)
    records = log_of(agent)
    await publish_batch(bus, agent, records[:4])
    await publish_batch(bus, agent, records[6:])
    (alert,) = await alerts(bus)
    assert alert["kind"] == "log_gap" and alert["device_id"] == device_of(agent)
    assert alert["evidence"]["missing_from"] == 5 and alert["evidence"]["missing_to"] == 6
    counts = await records_of(bus, device_of(agent))
    assert counts == Counter({s: 1 for s in (1, 2, 3, 4, 7, 8, 9, 10)})


async def test_a_deleted_record_shows_as_a_gap(
    bus: Bus, settings: Settings, services: Services, tmp_path: Path
) -> None:
    agent = await enrolled_agent(bus, settings, tmp_path, "pc-1")
    write_elevations(agent, 5)
    with agent.state.transaction() as db:
        db.execute("DELETE FROM offline_log WHERE seq = 3")
    async with agent:
        result = await agent.sync(wait_seconds=20)
    assert result.pending == 0
    (alert,) = await alerts(bus)
    assert alert["kind"] == "log_gap"
    assert (alert["evidence"]["missing_from"], alert["evidence"]["missing_to"]) == (3, 3)
    assert await records_of(bus, device_of(agent)) == Counter({1: 1, 2: 1, 4: 1, 5: 1})


async def test_an_edited_record_is_refused_as_tampered_and_the_others_accepted(
    bus: Bus, settings: Settings, services: Services, tmp_path: Path
) -> None:
    agent = await enrolled_agent(bus, settings, tmp_path, "pc-1")
    write_elevations(agent, 4)
    with agent.state.transaction() as db:
        (raw,) = db.execute("SELECT record FROM offline_log WHERE seq = 2").fetchone()
        record = orjson.loads(raw)
        record["data"]["user"] = "someone-else"
        db.execute("UPDATE offline_log SET record = ? WHERE seq = 2", (orjson.dumps(record),))
    async with agent:
        await agent.sync(wait_seconds=20)
    (alert,) = await alerts(bus)
    assert alert["kind"] == "log_tampered" and alert["evidence"]["device_seq"] == 2
    assert alert["evidence"]["offered"]["data"]["user"] == "someone-else"
    assert await records_of(bus, device_of(agent)) == Counter({1: 1, 3: 1, 4: 1})


async def test_a_fork_raises_an_alert_and_keeps_the_record_accepted_first(
    bus: Bus, settings: Settings, services: Services, tmp_path: Path
) -> None:
    agent = await enrolled_agent(bus, settings, tmp_path, "pc-1")
    write_elevations(agent, 3)
    async with agent:
        await agent.sync(wait_seconds=20)
    # the same disk restored from an older backup (or cloned) takes another path from seq 3
    clone = tmp_path / "pc-1-restored"
    shutil.copytree(tmp_path / "pc-1", clone)
    restored = Agent(clone)
    with restored.state.open(create=False).transaction() as db:
        db.execute("DELETE FROM offline_log WHERE seq = 3")
    write_elevations(restored, 2, user="mallory")  # seq 3 and 4 of another history
    await publish_batch(bus, restored, log_of(restored)[2:])
    restored.state.close()
    found = await alerts(bus)
    forks = [a for a in found if a["kind"] == "log_fork"]
    assert forks and all(a["device_id"] == device_of(agent) for a in forks)
    first = next(a for a in forks if a["evidence"]["device_seq"] == 3)
    assert first["evidence"]["accepted_hash"] == log_of(agent)[2].hash
    assert first["evidence"]["offered"]["data"]["user"] == "mallory"
    counts = await records_of(bus, device_of(agent))
    assert counts == Counter({1: 1, 2: 1, 3: 1, 4: 1})  # 4 (new) is accepted, 3 is not replaced
    events = await stored_events(bus, f"epm.evt.acme.device.{device_of(agent)}.*")
    third = next(e for _, _, e in events if e["data"].get("device_seq") == 3)
    assert third["data"]["user"] == "bob"


async def test_a_bad_batch_signature_refuses_the_whole_batch_with_an_alert(
    bus: Bus, settings: Settings, services: Services, tmp_path: Path
) -> None:
    agent = await enrolled_agent(bus, settings, tmp_path, "pc-1")
    write_elevations(agent, 5)
    identity = agent.identity
    assert identity is not None
    forged = signed_message(
        DeviceKey.generate(),
        tenant="acme",
        device_id=identity.device_id,
        message=batch_of(log_of(agent)),
        msg_id=str(uuid.uuid4()),
    )
    await bus.js.publish(forged.subject, forged.body, headers=forged.headers)
    found = await eventually(lambda: alerts(bus))
    assert found[0]["kind"] == "bad_signature" and found[0]["device_id"] == identity.device_id
    assert found[0]["evidence"]["msg_id"] == forged.msg_id
    assert await records_of(bus, identity.device_id) == Counter()
    async with agent:  # the genuine upload still goes through
        result = await agent.sync(wait_seconds=20)
    assert result.confirmed == 5
    await exactly_once(bus, identity.device_id, range(1, 6))


async def test_a_code_redeemed_twice_on_one_device_raises_code_reuse(
    bus: Bus, settings: Settings, services: Services, tmp_path: Path
) -> None:
    agent = await enrolled_agent(bus, settings, tmp_path, "pc-1")
    write_redemption(agent, 7, "a" * 64)
    write_elevations(agent, 1)
    async with agent:
        await agent.sync(wait_seconds=20)
    write_redemption(agent, 7, "a" * 64)  # the used-counter table was reset behind its back
    async with agent:
        await agent.sync(wait_seconds=20)
    found = await alerts(bus)
    assert [a["kind"] for a in found] == ["code_reuse"]
    evidence = found[0]["evidence"]
    assert evidence["code_ref"] == "access_code:v1:7"
    assert evidence["first"] == {"device_id": device_of(agent), "device_seq": 1}
    assert evidence["again"] == {"device_id": device_of(agent), "device_seq": 3}
    await exactly_once(bus, device_of(agent), range(1, 4))  # what happened is still recorded


async def test_one_code_redeemed_on_two_devices_raises_code_reuse(
    bus: Bus, settings: Settings, services: Services, tmp_path: Path
) -> None:
    first = await enrolled_agent(bus, settings, tmp_path, "pc-1")
    second = await enrolled_agent(bus, settings, tmp_path, "pc-2")  # a cloned disk, enrolled
    write_redemption(first, 3, "b" * 64)
    write_redemption(second, 3, "b" * 64)
    write_elevations(second, 2)
    async with first:
        await first.sync(wait_seconds=20)
    async with second:
        await second.sync(wait_seconds=20)
    (alert,) = await alerts(bus)
    assert alert["kind"] == "code_reuse" and alert["device_id"] == device_of(second)
    assert alert["evidence"]["first"]["device_id"] == device_of(first)
    assert alert["evidence"]["code_hash"] == "b" * 64
    await exactly_once(bus, device_of(second), range(1, 4))


async def test_a_cloned_state_dir_is_refused_as_a_fork_and_says_so_and_the_original_is_kept(
    bus: Bus, settings: Settings, services: Services, tmp_path: Path
) -> None:
    """``cp -a`` of an enrolled agent, the same code redeemed offline on both copies, both
    synced within the stream's duplicate window: the copy's upload is not dropped as a
    re-send of the original's (its records differ, so does its message id), request-svc
    raises log_fork with the copy's records as evidence, and the copy's sync says its
    records were refused instead of taking the original's acknowledgement for its own."""
    agent = await enrolled_agent(bus, settings, tmp_path, "pc-1")
    device_of(agent)
    agent.state.close()
    shutil.copytree(tmp_path / "pc-1", tmp_path / "pc-1-fork")
    fork = Agent(tmp_path / "pc-1-fork", answer_timeout=0.5)
    write_redemption(agent, 5, "c" * 64)
    write_elevations(agent, 1, user="bob")
    with fork.state.open(create=False).transaction() as db:  # the same code, another user
        append_record(
            db,
            "OfflineCodeRedeemed",
            device_of(agent),
            DEVICE_TIME + timedelta(minutes=5),
            {
                "kind": "access_code",
                "code_ref": "access_code:v1:5",
                "code_hash": "c" * 64,
                "grant": "app",
                "user": "mallory",
            },
        )
    write_elevations(fork, 1, user="mallory")
    async with agent:
        assert (await agent.sync(wait_seconds=20)).as_json() == {
            "sent": 2,
            "confirmed": 2,
            "pending": 0,
        }
    async with fork:
        forked = await fork.sync(wait_seconds=20)
    assert forked.as_json() == {
        "sent": 2,
        "confirmed": 0,
        "pending": 0,
        "refused": 2,
        "refusals": {"log_fork": [1, 2]},
    }
    forks = [a for a in await alerts(bus) if a["kind"] == "log_fork"]
    assert sorted(a["evidence"]["device_seq"] for a in forks) == [1, 2]
    offered = next(a for a in forks if a["evidence"]["device_seq"] == 2)["evidence"]["offered"]
    assert offered["data"]["user"] == "mallory"
    device = device_of(agent)
    await exactly_once(bus, device, range(1, 3))
    events = await stored_events(bus, f"epm.evt.acme.device.{device}.ElevationPerformed")
    assert [e["data"]["user"] for _, _, e in events] == ["bob"]
    async with agent:  # the original read the copy's acknowledgement: not its own
        again = await agent.sync(wait_seconds=1)
    assert again.as_json() == {"sent": 0, "confirmed": 2, "pending": 0}


async def test_sync_reports_records_refused_as_tampered_not_as_confirmed(
    bus: Bus, settings: Settings, services: Services, tmp_path: Path
) -> None:
    agent = await enrolled_agent(bus, settings, tmp_path, "pc-1")
    write_elevations(agent, 14)
    async with agent:
        await agent.sync(wait_seconds=20)
    write_elevations(agent, 2)
    with agent.state.transaction() as db:
        for seq in (15, 16):
            (raw,) = db.execute("SELECT record FROM offline_log WHERE seq = ?", (seq,)).fetchone()
            record = orjson.loads(raw)
            record["data"]["user"] = "someone-else"
            db.execute(
                "UPDATE offline_log SET record = ? WHERE seq = ?", (orjson.dumps(record), seq)
            )
    async with agent:
        result = await agent.sync(wait_seconds=20)
    assert result.as_json() == {
        "sent": 2,
        "confirmed": 14,
        "pending": 0,
        "refused": 2,
        "refusals": {"log_tampered": [15, 16]},
    }
    assert sorted(a["evidence"]["device_seq"] for a in await alerts(bus)) == [15, 16]


# --- where uploads are prepared ---------------------------------------------------------


def intake_of(running: RunningService) -> AgentIntake:
    return next(w for w in running.ctx.workers if isinstance(w, AgentIntake))


async def test_uploads_prepared_on_the_event_loop_without_a_worker_are_accepted_once(
    bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    """EPM_REPLAY_WORKERS=0: the same preparation, on request-svc's event loop."""
    inline = await acme_with_request_svc(bus, settings, replay_workers=0)
    try:
        assert intake_of(inline.running[0]).replay.workers == 0
        agent = await enrolled_agent(bus, settings, tmp_path, "pc-1")
        write_elevations(agent, 120)
        async with agent:
            result = await agent.sync(wait_seconds=20)
        assert result.as_json() == {"sent": 120, "confirmed": 120, "pending": 0}
        await exactly_once(bus, device_of(agent), range(1, 121))
    finally:
        await inline.stop_all()


async def test_a_killed_replay_worker_is_replaced_and_the_uploads_still_replayed(
    bus: Bus, settings: Settings, services: Services, tmp_path: Path
) -> None:
    agent = await enrolled_agent(bus, settings, tmp_path, "pc-1")
    write_elevations(agent, 30)
    async with agent:
        assert (await agent.sync(wait_seconds=20)).as_json()["confirmed"] == 30
    workers = intake_of(services.running[0]).replay._workers
    assert workers is not None and workers.pids
    for pid in workers.pids:
        os.kill(pid, signal.SIGKILL)
    write_elevations(agent, 30)
    async with agent:
        result = await agent.sync(wait_seconds=20)
    assert result.as_json() == {"sent": 30, "confirmed": 60, "pending": 0}
    await exactly_once(bus, device_of(agent), range(1, 61))
