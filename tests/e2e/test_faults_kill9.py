"""The fault suite: kill -9 every process of an `epm dev` stack in turn under load, and show
that nothing acknowledged is lost and nothing is recorded twice.

One stack for the module. In-process agents (the epm_agent SDK, a few devices) send
elevation requests without pause; a tenant rule answers most of them at once, the rest stay
open. While they run, each process is killed with SIGKILL in turn (request-svc,
approval-svc, audit-svc, notify-svc, gateway, nats-server: PIDs from endpoints.json's
"processes") once the load has made progress since the previous kill, and `epm dev`
restarts it. Then:

- every request whose message EPM_AGENT acknowledged to the agent (a PubAck: the agent's
  ``request`` returned) has exactly one RequestCreated in EPM_EVENTS;
- no event id appears twice in EPM_EVENTS;
- the audit trail holds every EPM_EVENTS event exactly once (its SQLite's event ids and
  stream sequences equal the stream's) and verifies end to end.

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
import orjson
import pytest
from epm_agent.agent import Agent
from epm_agent.errors import AgentError

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

    def __init__(self, agents: list[Agent], tmp: Path) -> None:
        self.agents = agents
        self.exe = tmp / "elsewhere" / "fault.exe"  # not on this machine: its --sha256 names it
        self.acknowledged: list[str] = []
        self.figures = Figures()
        self.done = False
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

    async def run(self) -> None:
        try:
            await asyncio.gather(*(self.device(a, i) for i, a in enumerate(self.agents)))
        finally:
            self.done = True


async def kill_in_turn(stack: Stack, load: Load) -> None:
    for name in KILL_ORDER:
        mark = load.figures.acknowledged

        async def progressed(mark: int = mark) -> bool:
            return load.figures.acknowledged >= mark + PROGRESS_BETWEEN_KILLS or load.done

        await poll(f"load progress before killing {name}", progressed)
        pid = (stack.dev.endpoints() or {})["processes"][name]
        os.kill(pid, signal.SIGKILL)
        load.figures.faults_injected += 1
        load.figures.killed.append(name)
        log.info("killed %s (pid %s)", name, pid)

        async def restarted(name: str = name, pid: int = pid) -> bool:
            new = ((stack.dev.endpoints() or {}).get("processes") or {}).get(name)
            return isinstance(new, int) and new != pid and process_alive(new)

        await poll(f"epm dev to restart {name}", restarted)


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
    load = Load(agents, stack.tmp)
    try:
        runner = asyncio.create_task(load.run())
        await kill_in_turn(stack, load)
        await runner
    finally:
        for agent in agents:
            with contextlib.suppress(Exception):
                await agent.close()
    figures = load.figures
    log.warning("agents were refused: %s", dict(load.errors))
    assert figures.faults_injected == len(KILL_ORDER)
    assert figures.acknowledged > REQUESTS_PER_DEVICE  # the load did run through the faults

    async def ready() -> bool:
        try:
            async with httpx.AsyncClient() as client:
                return (await client.get(stack.url + "/readyz", timeout=5)).status_code == 200
        except httpx.HTTPError:
            return False

    await poll("the gateway to be ready again", ready)

    acknowledged = set(load.acknowledged)

    async def all_created() -> list[tuple[int, str, str, dict[str, Any]]] | None:
        events = await stream_events(stack)
        created = {d.get("request_id") for _, s, _, d in events if s.endswith(".RequestCreated")}
        return events if acknowledged <= created else None

    try:
        events = await poll("a RequestCreated for every acknowledged request", all_created)
    except AssertionError:
        events = await stream_events(stack)
    created = Counter(d.get("request_id") for _, s, _, d in events if s.endswith(".RequestCreated"))
    ids = Counter(eid for _, _, eid, _ in events)
    figures.events_in_stream = len(events)
    figures.lost = sum(1 for r in acknowledged if created[r] == 0)
    figures.duplicated = sum(1 for n in created.values() if n > 1) + sum(
        1 for n in ids.values() if n > 1
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

    (stack.tmp / "fault-figures.json").write_bytes(orjson.dumps(asdict(figures)))
    log.warning("fault suite figures: %s", asdict(figures))
    print("fault suite figures:", orjson.dumps(asdict(figures)).decode())

    assert figures.lost == 0, f"acknowledged but never created: {figures}"
    assert figures.duplicated == 0, f"recorded twice: {figures}"
    assert figures.missing_from_audit == 0 and figures.extra_in_audit == 0, figures
    token = (stack.dev.data_dir / "admin-token").read_text().strip()
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as client:
        verified = (await client.get(stack.url + "/v1/audit/verify", timeout=60)).json()
    assert verified["ok"] is True, verified
