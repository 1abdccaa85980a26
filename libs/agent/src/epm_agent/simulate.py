"""``epm-agent simulate``: a fleet of agents in one process, offline and back (a replay storm).

Every simulated device is a real ``Agent`` (the SDK, its own state dir and NATS
connection): it enrolls with an enrollment token made through the HTTP API, gets
``events`` unpinned application codes through the offline-codes route, goes offline,
redeems them (each redemption writes OfflineCodeRedeemed + ElevationPerformed to its
offline log), and then every device reconnects at once and syncs.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from epm_agent.agent import Agent, SyncResult
from epm_agent.errors import AgentError, ServerUnreachable
from epm_agent.nats_tls import read_ca_file

T = TypeVar("T")

MAX_CODES_PER_CALL = 50  # the offline-codes route's own limit
SETUP_CONCURRENCY = 16
SYNC_WAIT = 120.0


@dataclass(frozen=True, slots=True)
class FleetResult:
    devices: int
    records: int
    sent: int
    confirmed: int
    seconds: float

    def as_json(self) -> dict[str, Any]:
        return {
            "devices": self.devices,
            "records": self.records,
            "sent": self.sent,
            "confirmed": self.confirmed,
            "seconds": round(self.seconds, 3),
        }


Progress = Callable[[str, int, int], None]
"""(phase, done, total): called as the simulation moves on."""


class HttpApi:
    """The few HTTP routes the simulator needs, with the operator's token."""

    def __init__(self, url: str, token: str) -> None:
        import httpx

        self.url = url.rstrip("/")
        self._client = httpx.AsyncClient(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30.0
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        try:
            response = await self._client.post(path, json=body)
        except httpx.HTTPError as exc:
            raise ServerUnreachable(
                f"cannot reach the EPM server at {self.url} ({type(exc).__name__}); check --url"
            ) from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail") or response.reason_phrase
            except ValueError:
                detail = response.reason_phrase
            raise AgentError(f"POST {path} was refused ({response.status_code}): {detail}")
        out: dict[str, Any] = response.json()
        return out


async def simulate(
    url: str,
    token: str,
    tenant: str,
    devices: int,
    events: int,
    *,
    state_root: Path | None = None,
    progress: Progress | None = None,
    nats_ca: Path | None = None,
) -> FleetResult:
    """``nats_ca``: the CA every simulated agent trusts for NATS (``enroll --nats-ca``)."""
    if devices < 1 or events < 0:
        raise AgentError("--devices must be at least 1 and --events at least 0")
    if nats_ca is not None:
        read_ca_file(nats_ca)  # a bad file: one clear error before anything is created
    report = progress or (lambda phase, done, total: None)
    api = HttpApi(url, token)
    with tempfile.TemporaryDirectory(prefix="epm-simulate-", dir=state_root) as tmp:
        agents = [Agent(Path(tmp) / f"device-{i:05d}") for i in range(devices)]
        try:
            await _bounded(
                [
                    partial(_prepare, api, tenant, a, i, events, nats_ca)
                    for i, a in enumerate(agents)
                ],
                lambda done: report("offline", done, devices),
            )
            records = sum(a.offline_access().tables.upload_counts()[0] for a in agents)
            for a in agents:
                a.offline = False
            done = 0

            async def reconnect(agent: Agent) -> SyncResult:
                nonlocal done
                result = await agent.sync(wait_seconds=SYNC_WAIT)
                done += 1
                report("sync", done, devices)
                return result

            started = time.perf_counter()
            results = await asyncio.gather(*(reconnect(a) for a in agents))
            seconds = time.perf_counter() - started
        finally:
            await api.close()
            for a in agents:
                await a.close()
    return FleetResult(
        devices=devices,
        records=records,
        sent=sum(r.sent for r in results),
        confirmed=sum(r.confirmed for r in results),
        seconds=seconds,
    )


async def _prepare(
    api: HttpApi, tenant: str, agent: Agent, i: int, events: int, nats_ca: Path | None
) -> None:
    """Enroll, fetch ``events`` codes while online, go offline, redeem them all."""
    enrollment = await api.post(f"/v1/tenants/{tenant}/enrollment-tokens", {})
    identity = await agent.enroll(
        api.url, enrollment["token"], hostname=f"sim-{i:05d}", nats_ca=nats_ca
    )
    codes: list[str] = []
    while len(codes) < events:
        count = min(MAX_CODES_PER_CALL, events - len(codes))
        issued = await api.post(
            f"/v1/tenants/{tenant}/devices/{identity.device_id}/offline-codes",
            {"purpose": "app", "count": count},
        )
        codes.extend(c["code"] for c in issued["codes"])
    await agent.disconnect()
    agent.offline = True
    for n, code in enumerate(codes):
        sha = hashlib.sha256(f"sim-app-{i}-{n}".encode()).hexdigest()
        await agent.offline_redeem(code, exe=f"C:\\Apps\\tool-{n}.exe", sha256=sha, user="sim")


async def _bounded(jobs: Sequence[Callable[[], Awaitable[T]]], done: Callable[[int], None]) -> None:
    gate = asyncio.Semaphore(SETUP_CONCURRENCY)
    finished = 0

    async def one(job: Callable[[], Awaitable[T]]) -> None:
        nonlocal finished
        async with gate:
            await job()
        finished += 1
        done(finished)

    await asyncio.gather(*(one(j) for j in jobs))


class ProgressBar:
    """One line on the terminal, redrawn in place: ``phase [#####.....] done/total``."""

    WIDTH = 30

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.phase = ""

    def __call__(self, phase: str, done: int, total: int) -> None:
        if phase != self.phase and self.phase:
            self.stream.write("\n")
        self.phase = phase
        filled = self.WIDTH * done // max(total, 1)
        label = {"offline": "devices offline", "sync": "devices synced"}.get(phase, phase)
        bar = "#" * filled + "." * (self.WIDTH - filled)
        self.stream.write(f"\r{label:<16} [{bar}] {done}/{total}")
        if done >= total:
            self.stream.write("\n")
            self.phase = ""
        self.stream.flush()
