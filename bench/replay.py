"""Replay storm: N devices reconnect at once and upload their offline logs.

``python -m bench.replay [--quick]`` runs it alone; ``replay_rows`` is what a bench
harness calls. Set-up (not measured): a nats-server, request-svc as a child process, N devices
enrolled through request-svc's own command, each with its offline log written by the agent
SDK (``append_record``, the agent's own log writer). Measured: from the first upload
publish (every device's ``Agent.upload``, own NATS connection, all at once) until
EPM_EVENTS holds one event per record; then checked: every (device, sequence) exactly once.
The ceiling is the raw ``publish_async`` of pre-built payloads (bench.ceilings) measured
in the same run, interleaved with the storm.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from epm_agent.agent import Agent
from epm_agent.device_key import DeviceKey
from epm_agent.offline_state import append_record
from epm_agent.state import Identity, StateDir
from epm_events.catalog import TenantCreated
from epm_events.streams import EVENTS
from epm_service.bus import Bus, connect
from epm_service.natsserver import NatsServer
from epm_service.principal import Principal
from epm_service.publisher import EventPublisher
from epm_service.rpc import call
from epm_service.settings import Settings
from epm_service.streams import apply_streams
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from bench import ceilings
from bench.online_request import start_services, stop_services, until_answers
from bench.results import Row, compared, table
from bench.workload import workload

REPLAY = "replay.storm"
TENANT = "storm"
ADMIN = Principal(token_id="bench", name="bench", role="msp_admin", tenant=None)
RECORD_FILTER = f"epm.evt.{TENANT}.device.*.ElevationPerformed"


async def replay_rows(quick: bool, workdir: Path) -> list[Row]:
    """The replay storm and its same-run publish ceiling, as result rows."""
    devices, per_device = (200, 100) if quick else (1000, 100)
    repeats = 2
    records = devices * per_device
    with NatsServer(workdir / "nats") as server:
        settings = Settings(nats_url=server.url, data_dir=workdir / "data")
        bus = await connect(settings, name="bench-replay")
        try:
            prepared = workload(records)
            gc.collect()
            gc.freeze()
            ceiling_runs: list[float] = []
            storm_runs: list[float] = []
            for i in range(repeats):
                ceiling_runs.append((await ceilings.publish_ceiling(bus, prepared)).value)
                storm_runs.append(
                    await storm(bus, settings, workdir / f"storm-{i}", devices, per_device)
                )
                say(
                    f"replay: ceiling {ceiling_runs[-1]:,.0f} msg/s, storm "
                    f"{storm_runs[-1]:,.0f} records/s ({devices} devices, {records:,} records)"
                )
        finally:
            gc.unfreeze()
            await bus.close()
    ceiling = Row(ceilings.PUBLISH, round(max(ceiling_runs), 1), "msg/s")
    return [compared(REPLAY, max(storm_runs), "records/s", ceiling, ">=0.5")]


async def storm(
    bus: Bus, settings: Settings, workdir: Path, devices: int, per_device: int
) -> float:
    """records/s from the first upload until every record is in EPM_EVENTS, checked once each."""
    await fresh_streams(bus)
    settings = settings.model_copy(update={"data_dir": workdir / "data"})
    pub = EventPublisher(bus.js, "/epm/bench")
    await pub.append(TENANT, [TenantCreated(tenant_id=TENANT, name="Storm", created_by="b")], 0)
    # request-svc in its own process, as deployed: the simulated fleet in this one must
    # not share an interpreter (and a GIL) with the service it measures.
    service = start_services(settings.nats_url, workdir / "svc", ("request-svc",))
    agents: list[Agent] = []
    try:
        await until_answers(bus, "request-svc", "list_devices")
        say(f"enrolling {devices} devices and writing {devices * per_device:,} offline records")
        agents = await enroll_fleet(bus, settings, workdir, devices, per_device)
        before = (await bus.js.stream_info(EVENTS.name)).state.last_seq
        total = devices * per_device
        gc.collect()
        started = time.perf_counter()
        await asyncio.gather(*(upload(a) for a in agents))
        await wait_until_stored(bus, total)
        elapsed = time.perf_counter() - started
        await check_exactly_once(bus, before, devices, per_device)
        return total / elapsed
    finally:
        for a in agents:
            await a.close()
        stop_services(service)


async def upload(agent: Agent) -> None:
    identity = agent.identity
    assert identity is not None
    connected = await agent._connect(identity)
    assert connected is not None, "a simulated device could not connect"
    await agent.upload(connected, identity)


async def enroll_fleet(
    bus: Bus, settings: Settings, workdir: Path, devices: int, per_device: int
) -> list[Agent]:
    gate = asyncio.Semaphore(32)
    base = datetime(2026, 1, 5, 9, tzinfo=UTC)

    async def one(i: int) -> Agent:
        async with gate:
            created = await call(
                bus.nc, "request-svc", "create_enrollment_token", {"tenant": TENANT}, ADMIN
            )
            key = DeviceKey.generate()
            answer = await call(
                bus.nc,
                "request-svc",
                "enroll",
                {
                    "enrollment_token": created["token"],
                    "public_key": key.public_key_b64(),
                    "hostname": f"storm-{i:05d}",
                },
                ADMIN,
            )
        path = workdir / f"device-{i:05d}"
        with StateDir(path).open() as state:
            key.save(state.key_path)
            state.save_identity(
                Identity(
                    device_id=answer["device_id"],
                    tenant=TENANT,
                    hostname=f"storm-{i:05d}",
                    server_url="http://unused",
                    nats_url=settings.nats_url,
                    inbox_prefix=answer["inbox_prefix"],
                    subjects=answer["subjects"],
                    policy=answer["policy"],
                )
            )
            with state.transaction() as db:
                for n in range(per_device):
                    append_record(
                        db,
                        "ElevationPerformed",
                        answer["device_id"],
                        base + timedelta(minutes=n),
                        {
                            "user": f"user-{i % 50}",
                            "app": {
                                "file_name": f"tool-{n % 40}.exe",
                                "sha256": f"{(i * per_device + n):064x}",
                                "publisher": "Contoso Ltd",
                                "app_name": f"Tool {n % 40}",
                                "path": f"C:\\Program Files\\Contoso\\tool-{n % 40}.exe",
                            },
                        },
                    )
        return Agent(path)

    agents = await asyncio.gather(*(one(i) for i in range(devices)))
    for a in agents:
        a.offline_access()  # open the state before the clock starts
    return list(agents)


async def wait_until_stored(bus: Bus, total: int, timeout: float = 600) -> None:
    """Poll EPM_EVENTS (with a deadline) until it holds ``total`` replayed records."""
    deadline = time.monotonic() + timeout
    while True:
        info = await bus.js.stream_info(EVENTS.name, subjects_filter=RECORD_FILTER)
        stored = sum((info.state.subjects or {}).values())
        if stored >= total:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"only {stored:,} of {total:,} records reached EPM_EVENTS")
        await asyncio.sleep(0.02)


async def check_exactly_once(bus: Bus, after: int, devices: int, per_device: int) -> None:
    counts: Counter[tuple[str, int]] = Counter()
    done = asyncio.Event()
    expected = devices * per_device
    seen = 0

    async def count(msg: Msg) -> None:
        nonlocal seen
        data = orjson.loads(msg.data)["data"]
        counts[(data["device_id"], data["device_seq"])] += 1
        seen += 1
        if seen >= expected:
            done.set()

    sub = await bus.js.subscribe(
        RECORD_FILTER,
        stream=EVENTS.name,
        cb=count,
        ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after),
        pending_msgs_limit=-1,
        pending_bytes_limit=-1,
    )
    await asyncio.wait_for(done.wait(), 120)
    await sub.unsubscribe()
    twice = [k for k, n in counts.items() if n != 1]
    devices_seen = {d for d, _ in counts}
    assert not twice, f"{len(twice)} records are in EPM_EVENTS more than once, e.g. {twice[:3]}"
    assert len(counts) == expected and len(devices_seen) == devices, (
        f"{len(counts):,} distinct records from {len(devices_seen)} devices; expected "
        f"{expected:,} from {devices}"
    )


async def fresh_streams(bus: Bus) -> None:
    for name in ("EPM_EVENTS", "EPM_AGENT", "EPM_DEVICE", "EPM_DLQ"):
        with contextlib.suppress(NotFoundError):
            await bus.js.delete_stream(name)
    await apply_streams(bus.js)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.replay", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="200 devices, 20,000 records")
    args = parser.parse_args()
    logging.getLogger("epm_service.bus").setLevel(logging.ERROR)
    logging.getLogger("epm_request").setLevel(logging.WARNING)
    import uvloop

    with tempfile.TemporaryDirectory(prefix="epm-bench-replay-") as tmp:
        rows = uvloop.run(replay_rows(args.quick, Path(tmp)))
    print(table(rows))


if __name__ == "__main__":
    main()
