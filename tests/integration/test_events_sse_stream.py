"""``GET /v1/events`` over real HTTP (uvicorn in-process) and a real nats-server:
positions, resume with Last-Event-ID, tenant walls, live delivery, heartbeats, clean-up."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from epm_events.catalog import AppInfo, RequestCreated
from epm_events.streams import EVENTS
from epm_events.subjects import tenant_events_filter
from epm_gateway import events_stream
from epm_gateway.api import create_app
from epm_service.bus import Bus
from epm_service.settings import Settings

from tests.integration.test_gateway_api import Gateway, gateway_settings, running_gateway
from tests.integration.test_request_svc import eventually

__all__ = ["gateway_settings"]  # a fixture, used by name

DEADLINE = 20.0


@dataclass
class Frame:
    seq: int
    event: dict[str, Any]


@dataclass
class Live:
    gw: Gateway
    url: str

    def auth(self, token: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.gw.admin}"}

    async def frames(
        self,
        *,
        token: str | None = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        until: int | None = None,
    ) -> list[Frame]:
        """Events of one connection: to its end (follow=false), or until ``until`` arrived."""
        out: list[Frame] = []
        async with (
            asyncio.timeout(DEADLINE),
            httpx.AsyncClient(base_url=self.url, timeout=DEADLINE) as client,
            client.stream(
                "GET", "/v1/events", params=params, headers=self.auth(token) | (headers or {})
            ) as r,
        ):
            assert r.status_code == 200, await r.aread()
            assert r.headers["content-type"].startswith("text/event-stream")
            async for frame in sse(r):
                if "id" in frame:
                    out.append(Frame(int(frame["id"]), orjson.loads(frame["data"])))
                if until is not None and len(out) >= until:
                    break
        return out


async def sse(r: httpx.Response) -> AsyncIterator[dict[str, str]]:
    """Parsed SSE frames (comments as {"comment": ...})."""
    frame: dict[str, str] = {}
    async for line in r.aiter_lines():
        if not line:
            if frame:
                yield frame
            frame = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            key, _, value = line.partition(":")
            value = value.removeprefix(" ")
            frame[key] = frame[key] + "\n" + value if key in frame else value


@pytest.fixture
async def live(bus: Bus, gateway_settings: Settings) -> AsyncIterator[Live]:
    assert gateway_settings.bootstrap_token_file is not None
    admin = gateway_settings.bootstrap_token_file.read_text().strip()
    async with running_gateway(gateway_settings, admin) as gw:
        config = uvicorn.Config(
            create_app(gw.service), host="127.0.0.1", port=0, log_config=None, lifespan="off"
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())

        async def started() -> bool:
            return bool(server.started)

        await eventually(started, DEADLINE)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            yield Live(gw, f"http://127.0.0.1:{port}")
        finally:
            server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, DEADLINE)


def names(frames: list[Frame]) -> list[str]:
    """Event names without their version: epm.TenantCreated.v2 -> TenantCreated."""
    return [f.event["type"].split(".")[1] for f in frames]


async def test_replay_from_the_start_then_live_delivery(live: Live) -> None:
    for t in ("acme", "globex"):
        await live.gw.tenant(t)
    frames: list[Frame] = []
    async with (
        asyncio.timeout(DEADLINE),
        httpx.AsyncClient(base_url=live.url) as client,
        client.stream("GET", "/v1/events?after=0", headers=live.auth(None)) as r,
    ):
        async for frame in sse(r):
            if "id" in frame:
                frames.append(Frame(int(frame["id"]), orjson.loads(frame["data"])))
            if len(frames) == 3:  # the bootstrap token and two tenants, replayed: now live
                await live.gw.tenant("initech")
            if len(frames) == 4:
                break
    assert names(frames) == ["TokenIssued", "TenantCreated", "TenantCreated", "TenantCreated"]
    assert [f.event["tenant"] for f in frames[1:]] == ["acme", "globex", "initech"]
    seqs = [f.seq for f in frames]
    assert seqs == sorted(seqs) and len(set(seqs)) == 4


async def test_last_event_id_resumes_strictly_after_it(live: Live) -> None:
    for t in ("acme", "globex", "initech"):
        await live.gw.tenant(t)
    everything = await live.frames(params={"after": 0, "follow": "false"})
    assert len(everything) == 4
    # a reconnecting EventSource keeps its URL (after=0) and adds Last-Event-ID, which wins
    resumed = await live.frames(
        params={"after": 0, "follow": "false"},
        headers={"Last-Event-ID": str(everything[1].seq)},
    )
    assert resumed == everything[2:]
    after = await live.frames(params={"after": everything[2].seq, "follow": "false"})
    assert after == everything[3:]
    assert await live.frames(params={"after": everything[3].seq, "follow": "false"}) == []


async def test_tenant_principals_see_their_tenant_only(live: Live) -> None:
    for t in ("acme", "globex"):
        await live.gw.tenant(t)
    acme_admin = (await live.gw.token("tenant_admin", "acme"))["token"]
    acme_tech = (await live.gw.token("tenant_technician", "acme"))["token"]
    await live.gw.token("tenant_admin", "globex")
    await publish_request_event(live, "acme")
    await publish_request_event(live, "globex")

    mine = await live.frames(token=acme_admin, params={"after": 0, "follow": "false"})
    assert {f.event["tenant"] for f in mine} == {"acme"}
    assert {"TenantCreated", "TokenIssued", "RequestCreated"} <= set(names(mine))

    # a technician reads the request events the console lives on
    tech = await live.frames(token=acme_tech, params={"after": 0, "follow": "false"})
    assert [f.event["tenant"] for f in tech] == ["acme"]
    assert names(tech) == ["RequestCreated"]

    async with httpx.AsyncClient(base_url=live.url) as client:
        for token in (acme_admin, acme_tech):
            r = await client.get("/v1/events?tenant=globex", headers=live.auth(token))
            assert r.status_code == 404, r.text
            assert "globex" in r.json()["detail"]
        r = await client.get("/v1/events", headers={"Last-Event-ID": "x", **live.auth(None)})
        assert r.status_code == 422
        r = await client.get("/v1/events")
        assert r.status_code == 401

    # the MSP sees every tenant, or one
    msp = await live.frames(params={"after": 0, "follow": "false"})
    assert {"acme", "globex", "_global"} <= {f.event["tenant"] for f in msp}
    one = await live.frames(params={"tenant": "globex", "after": 0, "follow": "false"})
    assert one and {f.event["tenant"] for f in one} == {"globex"}


async def test_idle_stream_sends_pings_and_its_consumer_ends_with_the_client(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events_stream, "HEARTBEAT_SECONDS", 0.1)
    await live.gw.tenant("acme")
    acme = tenant_events_filter("acme")
    assert await consumers_on(live, acme) == 0
    async with (
        asyncio.timeout(DEADLINE),
        httpx.AsyncClient(base_url=live.url) as client,
        client.stream("GET", "/v1/events?tenant=acme", headers=live.auth(None)) as r,
    ):
        comments = []
        async for frame in sse(r):
            comments.append(frame.get("comment"))
            if comments.count("ping") >= 2:
                break
        assert await consumers_on(live, acme) == 1

    async def gone() -> bool:
        return await consumers_on(live, acme) == 0

    await eventually(gone, DEADLINE)  # the consumer does not outlive its client


async def consumers_on(live: Live, subject: str) -> int:
    infos = await live.gw.service.ctx.bus.js.consumers_info(EVENTS.name)
    return len([i for i in infos if i.config.filter_subject == subject])


async def publish_request_event(live: Live, tenant: str, request_id: str | None = None) -> None:
    """A RequestCreated appended as request-svc appends it."""
    now = datetime.now(UTC)
    event = RequestCreated(
        request_id=request_id or f"r-{tenant}",
        device_id=f"d-{tenant}",
        user="bob",
        app=AppInfo(file_name="editor.exe", sha256="a" * 64),
        created_at=now,
        expires_at=now + timedelta(days=4),
    )
    await live.gw.service.ctx.publisher.append(tenant, [event], 0)


async def test_epm_events_tail_prints_ndjson_with_sequences(live: Live) -> None:
    for t in ("acme", "globex"):
        await live.gw.tenant(t)
    base = ["--url", live.url, "--token", live.gw.admin, "--no-follow"]
    every = await epm_events_tail(*base, "--after", "0")
    assert [e["type"].split(".")[1] for e in every] == [
        "TokenIssued",
        "TenantCreated",
        "TenantCreated",
    ]
    assert all(isinstance(e["seq"], int) and e["specversion"] == "1.0" for e in every)
    later = await epm_events_tail(*base, "--after", str(every[0]["seq"]), "--tenant", "globex")
    assert [e["tenant"] for e in later] == ["globex"]


async def epm_events_tail(*args: str) -> list[dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "epm_cli.main",
        "events",
        "tail",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), DEADLINE)
    assert proc.returncode == 0, err.decode()
    return [orjson.loads(line) for line in out.splitlines()]


async def test_a_revoked_tokens_open_stream_sends_no_further_event_and_closes(
    live: Live,
) -> None:
    await live.gw.tenant("acme")
    integrator = await live.gw.token("integrator", "acme")
    after_revoke: list[dict[str, str]] = []
    async with (
        asyncio.timeout(DEADLINE),
        httpx.AsyncClient(base_url=live.url, timeout=DEADLINE) as client,
        client.stream("GET", "/v1/events", headers=live.auth(integrator["token"])) as r,
    ):
        assert r.status_code == 200, await r.aread()
        frames = sse(r)
        assert await anext(frames) == {"comment": "connected"}
        await publish_request_event(live, "acme")
        async for frame in frames:  # the stream is live
            if "id" in frame:
                break
        r2 = await live.gw.delete(f"/v1/tokens/{integrator['id']}")
        assert r2.status_code == 204, r2.text
        await publish_request_event(live, "acme", "r-after-revocation")
        revoked_at = asyncio.get_running_loop().time()
        after_revoke = [frame async for frame in frames]  # ends: the server closed it
        closed_in = asyncio.get_running_loop().time() - revoked_at
    assert not [f for f in after_revoke if "id" in f], after_revoke
    assert {"comment": "ended: the token was revoked or the session ended"} in after_revoke
    assert closed_in < 5
    # and the token cannot open another one
    async with httpx.AsyncClient(base_url=live.url) as client:
        r = await client.get("/v1/events", headers=live.auth(integrator["token"]))
        assert r.status_code == 401


async def test_an_idle_console_stream_closes_within_seconds_of_its_token_being_revoked(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events_stream, "REVALIDATE_SECONDS", 0.2)
    await live.gw.tenant("acme")
    tech = await live.gw.token("tenant_technician", "acme")  # reads request events only
    async with (
        asyncio.timeout(DEADLINE),
        httpx.AsyncClient(base_url=live.url, timeout=DEADLINE) as client,
    ):
        r = await client.post(
            "/v1/session", json={"token": tech["token"]}, headers={"X-EPM-Console": "1"}
        )
        assert r.status_code == 200, r.text
        async with client.stream("GET", "/v1/events") as r:  # the session cookie
            assert r.status_code == 200, await r.aread()
            frames = sse(r)
            assert (await anext(frames)) == {"comment": "connected"}
            revoked = await live.gw.delete(f"/v1/tokens/{tech['id']}")
            assert revoked.status_code == 204, revoked.text
            revoked_at = asyncio.get_running_loop().time()
            rest = [frame async for frame in frames]  # no event comes: the check ends it
            closed_in = asyncio.get_running_loop().time() - revoked_at
        assert [f for f in rest if "retry" not in f] == [
            {"comment": "ended: the token was revoked or the session ended"}
        ]
        assert closed_in < 3
        assert (await client.get("/v1/events")).status_code == 401
