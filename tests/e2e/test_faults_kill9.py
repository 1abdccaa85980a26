"""The fault suite: kill -9 every process of an `epm dev` stack in turn under load, and show
that nothing acknowledged is lost and nothing is recorded twice.

One stack for the module. In-process agents (the epm_agent SDK, a few devices) send
elevation requests without pause; a tenant rule answers most of them at once, the rest stay
open. Beside them, a few offline devices (the SDK too) redeem offline access codes (each
writes OfflineCodeRedeemed + ElevationPerformed to the device's offline log, the real
offline-log API) and sync their logs in signed batches, round after round, retrying
whenever the server cannot be reached. While they run, each process is killed with SIGKILL
in turn (request-svc, approval-svc, audit-svc, notify-svc, gateway, nats-server: PIDs from
endpoints.json's "processes") once both loads have made progress since the previous kill,
and `epm dev` restarts it. Then:

- every request whose message EPM_AGENT acknowledged to the agent (a PubAck: the agent's
  ``request`` returned) has exactly one RequestCreated in EPM_EVENTS;
- every offline record the agent marked sent (EPM_AGENT acknowledged its batch) or
  confirmed (request-svc's ReplayAck) during the faults is in EPM_EVENTS exactly once per
  (device, sequence); and once the stack is healthy every record written is sent and
  confirmed by further syncs, still exactly once;
- no event id appears twice in EPM_EVENTS;
- the audit trail holds every EPM_EVENTS event exactly once (its SQLite's event ids and
  stream sequences equal the stream's; the offline records among them once each) and
  verifies end to end.

The figures are written to <tmp>/fault-figures.json and logged; README.md's Reliability
section quotes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import nats.errors
import orjson
import pytest
from epm_agent.agent import Agent
from epm_agent.errors import AgentError
from epm_agent.offline_state import OfflineState
from epm_domain.offline_log import RECORD_EVENTS

from tests.e2e.devstack import DevProcess, process_alive
from tests.e2e.test_requests_flow import Stack

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)

DEVICES = 4
REQUESTS_PER_DEVICE = 75  # 300 requests in all
KILL_ORDER = ("request-svc", "approval-svc", "audit-svc", "notify-svc", "gateway", "nats-server")
PROGRESS_BETWEEN_KILLS = 30  # acknowledged requests after a restart before the next kill
RULED_SHA = "fa" * 32  # the tenant rule allows it: answered at once
OPEN_EVERY = 10  # every 10th request is for something no rule knows: it stays open
DEADLINE = 120.0
OFFLINE_DEVICES = 3
OFFLINE_CODES = 50  # per device (the offline-codes route's most per call): 100 records at most
OFFLINE_CODES_PER_ROUND = 2  # redeemed, then synced: four records a batch (more after errors)
OFFLINE_CODES_PER_PHASE = 6  # per device between two kills (and a round at a kill): the
# replays go on through all six
OFFLINE_PROGRESS_BETWEEN_KILLS = 6  # offline records newly confirmed after a restart
OFFLINE_PAUSE = 0.15  # between an offline device's rounds (redeem one code, sync)
OFFLINE_SYNC_WAIT = 1.0  # how long one sync waits for the server's ReplayAck


@dataclass
class Figures:
    requests_sent: int = 0
    acknowledged: int = 0
    not_acknowledged: int = 0  # the agent was told the server did not confirm: it may retry
    answered_at_once: int = 0
    faults_injected: int = 0
    killed: list[str] = field(default_factory=list)
    events_in_stream: int = 0
    audit_records: int = 0
    lost: int = 0  # acknowledged requests without RequestCreated
    duplicated: int = 0  # requests with more than one RequestCreated, or event ids seen twice
    missing_from_audit: int = 0
    extra_in_audit: int = 0
    offline_devices: int = 0
    offline_records_written: int = 0
    offline_sync_rounds: int = 0
    offline_sync_refused: int = 0  # a sync that failed (server unreachable, lost mid-way)
    offline_unconfirmed_at_kill: list[int] = field(default_factory=list)  # in flight, per kill
    offline_sent_during_faults: int = 0  # marked sent: EPM_AGENT acknowledged their batch
    offline_confirmed_during_faults: int = 0  # confirmed by request-svc's ReplayAck
    offline_confirmed_in_the_end: int = 0  # after further syncs on the healthy stack
    offline_seconds_to_confirm_the_rest: float = 0.0  # from the end of the load
    offline_records_in_stream: int = 0  # offline record events in EPM_EVENTS
    offline_lost: int = 0  # acknowledged (sent or confirmed) but not in EPM_EVENTS
    offline_never_accepted: int = 0  # written, but not in EPM_EVENTS in the end
    offline_duplicated: int = 0  # (device, seq) with more than one event in EPM_EVENTS
    offline_audit_not_once: int = 0  # offline events not exactly once in the audit trail
    security_alerts: dict[str, int] = field(default_factory=dict)  # by kind; nothing was forged


async def poll(what: str, check: Callable[[], Any], deadline: float = DEADLINE) -> Any:
    end = time.monotonic() + deadline
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline:g}s waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("faults")
    dev = DevProcess(tmp / "data", "--port", "0", "--nats-port", "0")
    dev.start()
    try:
        yield Stack(dev, dev.wait_ready(), tmp)
    finally:
        try:
            dev.stop()
        finally:
            dev.kill_everything()


class Load:
    """The agents and what they were told."""

    def __init__(
        self, agents: list[Agent], tmp: Path, offline: list[tuple[Agent, list[str]]]
    ) -> None:
        self.agents = agents
        self.offline = offline  # offline devices and their unused access codes
        self.exe = tmp / "elsewhere" / "fault.exe"  # not on this machine: its --sha256 names it
        self.acknowledged: list[str] = []
        self.figures = Figures(offline_devices=len(offline))
        self.done = False
        self.faults_done = False
        self.phase = 0  # faults injected so far
        self.in_flight = False  # an offline device started to sync new records
        self.round_wanted = False  # the next kill waits for one more round of new records
        self.kick = asyncio.Event()  # in_flight or offline_done changed
        self.offline_done = False
        self.errors: Counter[str] = Counter()

    async def device(self, agent: Agent, index: int) -> None:
        for i in range(REQUESTS_PER_DEVICE):
            sha = RULED_SHA if i % OPEN_EVERY else f"{index:02x}{i:062x}"
            self.figures.requests_sent += 1
            try:
                outcome = await agent.request(
                    str(self.exe), sha256=sha, user=f"user{index}", reason="fault suite"
                )
            except AgentError as exc:  # unreachable, or JetStream not back after a restart
                self.figures.not_acknowledged += 1
                self.errors[str(exc)[:160]] += 1
                await asyncio.sleep(0.2)  # an agent backs off before trying again
                continue
            self.acknowledged.append(outcome.request_id)
            self.figures.acknowledged += 1
            if outcome.status == "approved":
                self.figures.answered_at_once += 1

    async def offline_device(self, agent: Agent, codes: list[str], index: int) -> None:
        """Redeem codes (two records each in the offline log), sync, again, until the faults
        are over: the log grows while batches go up through every fault."""
        n = 0
        phase, spent = -1, 0
        while codes and not (self.faults_done and self.done):
            if phase != self.phase:
                phase, spent = self.phase, 0
            if spent >= OFFLINE_CODES_PER_PHASE and not self.round_wanted:
                # this phase's share is written: sync what is not through, and wait for the
                # next fault (or for the killer to want one more round to kill it during)
                if self.unconfirmed(agent):
                    await self.sync(agent)
                await asyncio.sleep(OFFLINE_PAUSE)
                continue
            self.round_wanted = False
            for _ in range(min(OFFLINE_CODES_PER_ROUND, len(codes))):
                code = codes.pop()
                sha = f"{0xE0 + index:02x}{n:062x}"
                await agent.offline_redeem(
                    code, exe="C:\\Apps\\fault.exe", sha256=sha, user=f"offline{index}"
                )
                self.figures.offline_records_written += 2
                spent += 1
                n += 1
            self.in_flight = True  # the next kill lands while this batch goes up
            self.kick.set()
            await self.sync(agent)
            await asyncio.sleep(OFFLINE_PAUSE)

    async def sync(self, agent: Agent) -> None:
        self.figures.offline_sync_rounds += 1
        try:
            await agent.sync(wait_seconds=OFFLINE_SYNC_WAIT)
        except (AgentError, nats.errors.Error, OSError, TimeoutError) as exc:
            # unreachable, lost mid-upload: the records stay in the log for the next round
            self.figures.offline_sync_refused += 1
            self.errors[f"sync: {type(exc).__name__}: {str(exc)[:120]}"] += 1
            with contextlib.suppress(Exception):
                await agent.disconnect()

    @staticmethod
    def unconfirmed(agent: Agent) -> int:
        records, _, confirmed = OfflineState(agent.state).upload_counts()
        return records - confirmed

    def offline_confirmed(self) -> int:
        return sum(OfflineState(a.state).upload_counts()[2] for a, _ in self.offline)

    async def run(self) -> None:
        async def online() -> None:
            try:
                await asyncio.gather(*(self.device(a, i) for i, a in enumerate(self.agents)))
            finally:
                self.done = True

        async def offline() -> None:
            try:
                await asyncio.gather(
                    *(self.offline_device(a, c, i) for i, (a, c) in enumerate(self.offline))
                )
            finally:
                self.offline_done = True
                self.kick.set()

        await asyncio.gather(online(), offline())


async def kill_in_turn(stack: Stack, load: Load) -> None:
    try:
        await _kill_in_turn(stack, load)
    finally:
        load.faults_done = True


async def _kill_in_turn(stack: Stack, load: Load) -> None:
    for name in KILL_ORDER:
        mark = load.figures.acknowledged
        offline_mark = load.offline_confirmed()

        async def progressed(mark: int = mark, offline_mark: int = offline_mark) -> bool:
            online = load.figures.acknowledged >= mark + PROGRESS_BETWEEN_KILLS or load.done
            offline = (  # replays go through again (ReplayAcks), not only into EPM_AGENT
                load.offline_confirmed() >= offline_mark + OFFLINE_PROGRESS_BETWEEN_KILLS
                or load.offline_done
            )
            return online and offline

        await poll(f"load progress before killing {name}", progressed)
        # Kill while a round of new offline records is on its way (an idle device writes one).
        load.in_flight, load.round_wanted = False, True
        while not (load.in_flight or load.offline_done):
            load.kick.clear()
            await asyncio.wait_for(load.kick.wait(), DEADLINE)
        load.round_wanted = False
        pid = (stack.dev.endpoints() or {})["processes"][name]
        os.kill(pid, signal.SIGKILL)
        load.figures.faults_injected += 1
        load.figures.killed.append(name)
        load.figures.offline_unconfirmed_at_kill.append(
            sum(load.unconfirmed(a) for a, _ in load.offline)
        )
        log.info("killed %s (pid %s)", name, pid)

        async def restarted(name: str = name, pid: int = pid) -> bool:
            new = ((stack.dev.endpoints() or {}).get("processes") or {}).get(name)
            return isinstance(new, int) and new != pid and process_alive(new)

        await poll(f"epm dev to restart {name}", restarted)
        load.phase += 1


async def stream_events(stack: Stack) -> list[tuple[int, str, str, dict[str, Any]]]:
    """(seq, subject, event id, data) of every EPM_EVENTS message, in order."""
    nc = await nats.connect(stack.nats, user_credentials=stack.nats_creds)
    try:
        js = nc.jetstream()
        info = await js.stream_info("EPM_EVENTS")
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg("EPM_EVENTS", seq, direct=True)
            body = orjson.loads(msg.data or b"{}")
            data: dict[str, Any] = body.get("data") or {}
            out.append((seq, msg.subject or "", str(body.get("id")), data))
        return out
    finally:
        await nc.close()


def audit_rows(data_dir: Path) -> list[tuple[int, str]]:
    found = sorted(data_dir.glob("audit-svc-audit.sqlite"))  # <service>-<projection>.sqlite
    assert found, f"no audit projection under {data_dir}"
    db = found[0]
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return [
            (int(s), str(e)) for s, e in conn.execute("SELECT seq, event_id FROM audit_records")
        ]
    finally:
        conn.close()


OFFLINE_SUBJECTS = tuple(f".{name}" for name in RECORD_EVENTS)

Event = tuple[int, str, str, dict[str, Any]]


def offline_key(subject: str, data: dict[str, Any]) -> tuple[str, int] | None:
    """(device, seq) of a replayed offline record event, None for any other event."""
    if not subject.endswith(OFFLINE_SUBJECTS):
        return None
    return str(data.get("device_id")), int(data.get("device_seq") or 0)


def offline_log(agent: Agent) -> tuple[str, dict[int, tuple[bool, bool]]]:
    """The device id and, per record of its offline log, (sent, confirmed) as the agent
    has them: sent once EPM_AGENT acknowledged the batch, confirmed by a ReplayAck."""
    state = agent.state
    device = state.require_identity().device_id
    rows = state.db.execute("SELECT seq, sent_at IS NOT NULL, confirmed FROM offline_log")
    return device, {int(seq): (bool(sent), bool(confirmed)) for seq, sent, confirmed in rows}


async def sync_until_confirmed(offline: list[Agent]) -> bool:
    """One more sync of every offline device; True once none has anything pending."""
    pending = 0
    for agent in offline:
        try:
            pending += (await agent.sync(wait_seconds=5.0)).pending
        except (AgentError, nats.errors.Error, OSError, TimeoutError):
            return False
    return pending == 0


async def test_nothing_acknowledged_is_lost_or_doubled_when_every_process_is_killed(
    stack: Stack,
) -> None:
    stack.ok("tenant", "create", "acme", "--name", "Acme")
    stack.ok(
        "rule", "create", "--tenant", "acme", "--name", "fault", "--allow", "--sha256", RULED_SHA
    )
    agents = []
    for i in range(DEVICES):
        token = stack.ok("enrollment-token", "create", "--tenant", "acme")["token"]
        agent = Agent(stack.tmp / f"agent-{i}", answer_timeout=3.0, connect_timeout=2.0)
        await agent.enroll(stack.url, token, f"fault-{i}")
        agents.append(agent)
    offline: list[tuple[Agent, list[str]]] = []
    admin = (stack.dev.data_dir / "admin-token").read_text().strip()
    async with httpx.AsyncClient(
        base_url=stack.url, headers={"Authorization": f"Bearer {admin}"}, timeout=30
    ) as api:  # the HTTP API, not the CLI: a CLI process costs seconds on a busy machine
        for i in range(OFFLINE_DEVICES):
            enrollment = await api.post("/v1/tenants/acme/enrollment-tokens", json={})
            assert enrollment.status_code == 201, enrollment.text
            agent = Agent(stack.tmp / f"offline-{i}", connect_timeout=2.0)
            identity = await agent.enroll(stack.url, enrollment.json()["token"], f"offline-{i}")
            issued = await api.post(
                f"/v1/tenants/acme/devices/{identity.device_id}/offline-codes",
                json={"purpose": "app", "count": OFFLINE_CODES},
            )
            assert issued.status_code == 201, issued.text
            offline.append((agent, [c["code"] for c in issued.json()["codes"]]))
    load = Load(agents, stack.tmp, offline)
    runner = asyncio.create_task(load.run())
    try:
        await kill_in_turn(stack, load)
        await runner
        await check(stack, load)
    finally:
        runner.cancel()  # a failed kill leaves the load running
        with contextlib.suppress(BaseException):
            await runner
        for agent in [*agents, *(a for a, _ in offline)]:
            with contextlib.suppress(Exception):
                await agent.close()


async def check(stack: Stack, load: Load) -> None:
    figures = load.figures
    log.warning("agents were refused: %s", dict(load.errors))
    assert figures.faults_injected == len(KILL_ORDER)
    assert figures.acknowledged > REQUESTS_PER_DEVICE  # the load did run through the faults

    load_ended = time.monotonic()
    # what the offline devices were told while the faults went on
    offline = [a for a, _ in load.offline]
    during = dict(offline_log(a) for a in offline)
    offline_acknowledged = {
        (device, seq)
        for device, records in during.items()
        for seq, (sent, confirmed) in records.items()
        if sent or confirmed
    }
    figures.offline_sent_during_faults = sum(
        sent for records in during.values() for sent, _ in records.values()
    )
    figures.offline_confirmed_during_faults = sum(
        confirmed for records in during.values() for _, confirmed in records.values()
    )
    assert figures.offline_sent_during_faults > 0  # the replays did run through the faults

    async def ready() -> bool:
        try:
            async with httpx.AsyncClient() as client:
                return (await client.get(stack.url + "/readyz", timeout=5)).status_code == 200
        except httpx.HTTPError:
            return False

    await poll("the gateway to be ready again", ready)

    # the healthy stack takes the rest of every offline log: sync until nothing is pending
    with contextlib.suppress(AssertionError):
        await poll("every offline record to be confirmed", lambda: sync_until_confirmed(offline))
    figures.offline_seconds_to_confirm_the_rest = round(time.monotonic() - load_ended, 1)
    end = dict(offline_log(a) for a in offline)
    written = {(device, seq) for device, records in end.items() for seq in records}
    assert len(written) == figures.offline_records_written
    figures.offline_confirmed_in_the_end = sum(
        confirmed for records in end.values() for _, confirmed in records.values()
    )

    acknowledged = set(load.acknowledged)

    async def all_created() -> list[Event] | None:
        events = await stream_events(stack)
        created = {d.get("request_id") for _, s, _, d in events if s.endswith(".RequestCreated")}
        replayed = {offline_key(s, d) for _, s, _, d in events}
        return events if acknowledged <= created and written <= replayed else None

    try:
        events = await poll("every acknowledged request and offline record", all_created)
    except AssertionError:
        events = await stream_events(stack)
    created = Counter(d.get("request_id") for _, s, _, d in events if s.endswith(".RequestCreated"))
    ids = Counter(eid for _, _, eid, _ in events)
    figures.events_in_stream = len(events)
    figures.lost = sum(1 for r in acknowledged if created[r] == 0)
    figures.duplicated = sum(1 for n in created.values() if n > 1) + sum(
        1 for n in ids.values() if n > 1
    )
    replayed: Counter[tuple[str, int]] = Counter()
    offline_ids = set()
    for _, subject, eid, data in events:
        key = offline_key(subject, data)
        if key is not None:
            replayed[key] += 1
            offline_ids.add(eid)
    figures.offline_records_in_stream = sum(replayed.values())
    figures.offline_lost = sum(1 for k in offline_acknowledged if replayed[k] == 0)
    figures.offline_never_accepted = sum(1 for k in written if replayed[k] == 0)
    figures.offline_duplicated = sum(1 for n in replayed.values() if n > 1)
    figures.security_alerts = dict(
        Counter(str(d.get("kind")) for _, s, _, d in events if s.endswith(".SecurityAlertRaised"))
    )

    stream = {(seq, eid) for seq, _, eid, _ in events}

    async def audit_caught_up() -> bool:
        try:
            rows = audit_rows(stack.dev.data_dir)
        except sqlite3.Error:
            return False  # mid-rebuild after its kill: ask again
        return len(rows) >= len(stream)

    with contextlib.suppress(AssertionError):
        await poll("the audit trail to reach the stream's end", audit_caught_up)
    rows = audit_rows(stack.dev.data_dir)
    audit = set(rows)
    figures.audit_records = len(rows)
    figures.missing_from_audit = len(stream - audit)
    figures.extra_in_audit = len(audit - stream) + (len(rows) - len(audit))
    in_audit = Counter(eid for _, eid in rows)
    figures.offline_audit_not_once = sum(1 for eid in offline_ids if in_audit[eid] != 1)

    (stack.tmp / "fault-figures.json").write_bytes(orjson.dumps(asdict(figures)))
    log.warning("fault suite figures: %s", asdict(figures))
    print("fault suite figures:", orjson.dumps(asdict(figures)).decode())

    assert figures.lost == 0, f"acknowledged but never created: {figures}"
    assert figures.duplicated == 0, f"recorded twice: {figures}"
    assert figures.offline_lost == 0, f"offline records acknowledged but not replayed: {figures}"
    assert figures.offline_duplicated == 0, f"offline records replayed twice: {figures}"
    assert figures.offline_never_accepted == 0, f"offline records never replayed: {figures}"
    assert figures.offline_confirmed_in_the_end == figures.offline_records_written, figures
    assert figures.missing_from_audit == 0 and figures.extra_in_audit == 0, figures
    assert figures.offline_audit_not_once == 0, figures
    token = (stack.dev.data_dir / "admin-token").read_text().strip()
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as client:
        verified = (await client.get(stack.url + "/v1/audit/verify", timeout=60)).json()
    assert verified["ok"] is True, verified
