"""Replay storm: N devices reconnect at once and upload their offline logs.

``python -m bench.replay [--quick]`` runs it alone; ``replay_rows`` is what a bench
harness calls. Set-up (not measured): a nats-server, request-svc and audit-svc as child
processes (``epm serve``, as deployed), N devices enrolled through request-svc's own
command, each with its offline log written by the agent SDK (``append_record``, the
agent's own log writer), the audit trail caught up with the enrollments, and every device
connected (its own NATS connection): real devices connect side by side, each on its own
machine, where this one process would run a thousand connects one after the other (about
1.5 s at full size, reported). Measured: from the moment every device starts its upload
(``Agent.upload``), all at once, until audit-svc's trail (its SQLite file, read here) holds
one record per offline record. Then checked, in the trail: every (device, sequence) exactly once, and the
tenant's hash chain verifies; in EPM_EVENTS: every (device, sequence) exactly once.
The ceiling is the raw ``publish_async`` of pre-built payloads (bench.ceilings) measured
in the same run, interleaved with the storm. Each service's CPU time per record (from
/proc) is reported beside the figure: on a shared 2-core machine it moves far less than
the wall clock.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from epm_agent.agent import Agent, UploadRound
from epm_agent.device_key import DeviceKey
from epm_agent.offline_log import LogRecord
from epm_agent.offline_state import append_record
from epm_agent.state import Identity, StateDir
from epm_audit.app import NAME as AUDIT_SERVICE
from epm_audit.chain import verify_chain
from epm_audit.trail import AuditTrail, chain_records
from epm_events.catalog import SecurityAlertRaised, TenantCreated
from epm_events.streams import EVENTS
from epm_service.bus import Bus, connect
from epm_service.natsserver import NatsServer
from epm_service.principal import Principal
from epm_service.publisher import EventPublisher
from epm_service.rpc import call
from epm_service.runtime import tune_gc
from epm_service.settings import Settings
from epm_service.streams import apply_streams
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from bench import ceilings
from bench.online_request import cpu_seconds, start_services, stop_services, until_answers
from bench.results import Row, compared, table
from bench.workload import workload

REPLAY = "replay.storm"
TENANT = "storm"
ADMIN = Principal(token_id="bench", name="bench", role="msp_admin", tenant=None)
RECORD_TYPE = "ElevationPerformed"
RECORD_FILTER = f"epm.evt.{TENANT}.device.*.{RECORD_TYPE}"
SERVICES = ("request-svc", AUDIT_SERVICE)


async def replay_rows(quick: bool, workdir: Path) -> list[Row]:
    """The replay storm and its same-run publish ceiling, as result rows."""
    devices, per_device = (100, 100) if quick else (1000, 100)
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
            storm_runs: list[Storm] = []
            for i in range(repeats):
                ceiling_runs.append((await ceilings.publish_ceiling(bus, prepared)).value)
                storm_runs.append(
                    await storm(
                        bus,
                        settings,
                        workdir / f"storm-{i}",
                        devices,
                        per_device,
                        server.proc.pid if server.proc else None,
                    )
                )
                say(
                    f"replay: ceiling {ceiling_runs[-1]:,.0f} msg/s, storm "
                    f"{storm_runs[-1].rate:,.0f} records/s into the audit trail ({devices} "
                    f"devices, {records:,} records; {storm_runs[-1].cpu_note}; the fleet "
                    f"connected in {storm_runs[-1].connect_seconds:.1f} s before the clock)"
                )
        finally:
            gc.unfreeze()
            await bus.close()
    ceiling = Row(ceilings.PUBLISH, round(max(ceiling_runs), 1), "msg/s")
    best = max(storm_runs, key=lambda s: s.rate)
    return [compared(REPLAY, best.rate, f"records/s {best.cpu_note}", ceiling, ">=0.5")]


@dataclass(frozen=True, slots=True)
class Storm:
    rate: float
    """Records per second, devices reconnecting -> every record in the audit trail."""
    cpu_us: dict[str, float]
    """CPU time (user + system) per record of each service process over the same span."""
    connect_seconds: float
    """How long the fleet took to connect, one after the other, before the clock started."""

    @property
    def cpu_note(self) -> str:
        return "CPU/record µs: " + ", ".join(f"{n} {us:.0f}" for n, us in self.cpu_us.items())


async def storm(
    bus: Bus,
    settings: Settings,
    workdir: Path,
    devices: int,
    per_device: int,
    server_pid: int | None = None,
) -> Storm:
    """From the first upload until every record is in the audit trail, checked once each."""
    await fresh_streams(bus)
    settings = settings.model_copy(update={"data_dir": workdir / "data"})
    pub = EventPublisher(bus.js, "/epm/bench")
    await pub.append(TENANT, [TenantCreated(tenant_id=TENANT, name="Storm", created_by="b")], 0)
    # The services in their own processes, as deployed: the simulated fleet in this one
    # must not share an interpreter (and a GIL) with the services it measures.
    svc_dir = workdir / "svc"
    service = start_services(settings.nats_url, svc_dir, SERVICES)
    trail_db = svc_dir / f"{AUDIT_SERVICE}-{AuditTrail.name}.sqlite"
    agents: list[Agent] = []
    trail: AuditReader | None = None
    try:
        await until_answers(bus, "request-svc", "list_devices")
        await until_answers(bus, AUDIT_SERVICE, "keys")
        say(f"enrolling {devices} devices and writing {devices * per_device:,} offline records")
        agents = await enroll_fleet(bus, settings, workdir, devices, per_device)
        before = (await bus.js.stream_info(EVENTS.name)).state.last_seq
        trail = AuditReader(trail_db)
        await trail.wait_through(before)  # the enrollments are in the trail: not measured
        trail_before = trail.last_seq()
        total = devices * per_device
        # Each device connects on its own machine, side by side: here a thousand connects
        # would run one after the other through this one process, so they happen (timed,
        # reported) before the clock starts; the uploads all start together on it.
        connecting = time.perf_counter()
        buses = await asyncio.gather(*(connect_device(a) for a in agents))
        connect_seconds = time.perf_counter() - connecting
        # Likewise each device reads its log and signs its batches on its own CPU; here
        # that would be a thousand devices' work on the services' two cores, in the middle
        # of what is measured. So it is done before the clock (``Agent.prepare_upload``),
        # as the online row's devices sign before theirs. Sending and the stream's
        # acknowledgements run on the clock (``Agent.send_upload``); marking the records
        # sent, each device's own bookkeeping (a commit of its state file), after it.
        rounds = [prepare(a) for a in agents]
        acked: list[list[list[LogRecord]]] = [[] for _ in agents]
        gc.collect()
        pids = [p.pid for p in service] + ([server_pid] if server_pid else [])
        names = [*SERVICES, "nats-server"][: len(pids)]
        cpu_before = [cpu_seconds(pid) for pid in pids]
        fleet_before = time.process_time()
        started = time.perf_counter()
        await asyncio.gather(
            *(
                a.send_upload(b, r, done)
                for a, b, r, done in zip(agents, buses, rounds, acked, strict=True)
            )
        )
        await trail.wait_records(trail_before, total)
        elapsed = time.perf_counter() - started
        fleet = (time.process_time() - fleet_before) / total * 1e6
        marked = sum(a.mark_sent(done) for a, done in zip(agents, acked, strict=True))
        assert marked == total, f"{marked:,} of {total:,} records acknowledged"
        cpu = {
            name: (cpu_seconds(pid) - c0) / total * 1e6
            for name, pid, c0 in zip(names, pids, cpu_before, strict=True)
        } | {"fleet and trail reader (this process)": fleet}
        check_trail(trail_db, trail_before, devices, per_device)
        await check_exactly_once(bus, before, devices, per_device)
        return Storm(total / elapsed, cpu, connect_seconds)
    finally:
        if trail is not None:
            trail.close()
        for a in agents:
            await a.close()
        stop_services(service)


async def connect_device(agent: Agent) -> Bus:
    identity = agent.identity
    assert identity is not None
    connected = await agent._connect(identity)
    assert connected is not None, "a simulated device could not connect"
    return connected


def prepare(agent: Agent) -> UploadRound:
    identity = agent.identity
    assert identity is not None
    return agent.prepare_upload(identity)


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


class AuditReader:
    """audit-svc's trail, read from its SQLite file (WAL: a reader never blocks its writer).

    Counting is incremental (only records appended since the last look are visited), so
    polling while the storm runs costs the machine next to nothing."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        self.conn.execute("PRAGMA busy_timeout=5000")

    def close(self) -> None:
        self.conn.close()

    def last_seq(self) -> int:
        (last,) = self.conn.execute("SELECT coalesce(max(seq), 0) FROM audit_records").fetchone()
        return int(last)

    async def wait_through(self, seq: int, timeout: float = 300) -> None:
        """Until the trail's checkpoint has reached stream sequence ``seq``."""
        deadline = time.monotonic() + timeout
        while True:
            (at,) = self.conn.execute("SELECT seq FROM _checkpoint WHERE id = 1").fetchone()
            if at >= seq:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the audit trail stopped at {at}, short of {seq}")
            await asyncio.sleep(0.05)

    async def wait_records(self, after: int, total: int, timeout: float = 900) -> None:
        """Until the trail holds ``total`` offline records of the storm tenant past ``after``."""
        deadline = time.monotonic() + timeout
        seen, cursor = 0, after
        while True:
            self.conn.execute("BEGIN")
            try:
                (last,) = self.conn.execute(
                    "SELECT coalesce(max(seq), 0) FROM audit_records"
                ).fetchone()
                (new,) = self.conn.execute(
                    "SELECT count(*) FROM audit_records WHERE seq > ? AND seq <= ? "
                    "AND tenant = ? AND type = ?",
                    (cursor, last, TENANT, RECORD_TYPE),
                ).fetchone()
            finally:
                self.conn.execute("COMMIT")
            seen, cursor = seen + new, max(cursor, last)
            if seen >= total:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"only {seen:,} of {total:,} records reached the audit trail")
            await asyncio.sleep(0.02)


def check_trail(path: Path, after: int, devices: int, per_device: int) -> None:
    """In the audit trail: each (device, sequence) exactly once, and the chain verifies."""
    expected = devices * per_device
    counts: Counter[tuple[str, int]] = Counter()
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        for (event,) in conn.execute(
            "SELECT event FROM audit_records WHERE seq > ? AND tenant = ? AND type = ?",
            (after, TENANT, RECORD_TYPE),
        ):
            data = orjson.loads(event)["data"]
            counts[(data["device_id"], data["device_seq"])] += 1
        verdict = verify_chain(chain_records(conn, TENANT))
        (alerts,) = conn.execute(
            "SELECT count(*) FROM audit_records WHERE tenant = ? AND type = ?",
            (TENANT, SecurityAlertRaised.NAME),
        ).fetchone()
    each_record_once(counts, expected, devices, "the audit trail")
    assert verdict.ok, f"the storm tenant's audit chain does not verify: {verdict}"
    assert not alerts, f"{alerts} security alerts were raised by a clean replay"


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
    async with asyncio.timeout(120):
        await done.wait()
    await sub.unsubscribe()
    each_record_once(counts, expected, devices, "EPM_EVENTS")


async def fresh_streams(bus: Bus) -> None:
    for name in ("EPM_EVENTS", "EPM_AGENT", "EPM_DEVICE", "EPM_DLQ"):
        with contextlib.suppress(NotFoundError):
            await bus.js.delete_stream(name)
    await apply_streams(bus.js)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.replay", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="100 devices, 10,000 records")
    args = parser.parse_args()
    logging.getLogger("epm_service.bus").setLevel(logging.ERROR)
    logging.getLogger("epm_request").setLevel(logging.WARNING)
    tune_gc()  # collect as the services do (bench/__main__.py)
    import uvloop

    with tempfile.TemporaryDirectory(prefix="epm-bench-replay-") as tmp:
        rows = uvloop.run(replay_rows(args.quick, Path(tmp)))
    print(table(rows))


def each_record_once(
    counts: Counter[tuple[str, int]], expected: int, devices: int, where: str
) -> None:
    """The exactly-once check: every (device, seq) of every device once in ``where``."""
    twice = [k for k, n in counts.items() if n != 1]
    devices_seen = {d for d, _ in counts}
    assert not twice, f"{len(twice)} records are in {where} more than once, e.g. {twice[:3]}"
    assert len(counts) == expected and len(devices_seen) == devices, (
        f"{where} holds {len(counts):,} distinct records from {len(devices_seen)} devices; "
        f"expected {expected:,} from {devices}"
    )


if __name__ == "__main__":
    main()
