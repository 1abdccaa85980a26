"""Request created to technician notified: RequestCreated appended -> signed webhook received.

notify-svc runs in this process (the real service definition: projection,
dispatcher, httpx) with one webhook channel pointing at a loopback aiohttp
receiver. Requests are appended at a steady rate (100/s); each latency runs
from just before the append to the moment the receiver has the request. The
row has no raw-client ceiling: the target (p99 < 100 ms, DESIGN.md) applies
to the value.

``python -m bench.notify_latency [--quick]`` runs it alone on its own nats-server.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from aiohttp import web
from epm_events.catalog import AppInfo, RequestCreated, TenantCreated
from epm_notify.app import DEFINITION
from epm_service.bus import Bus
from epm_service.principal import SYSTEM
from epm_service.publisher import EventPublisher
from epm_service.rpc import call
from epm_service.runtime import start_service
from epm_service.settings import Settings

from bench.results import Row

P50 = "notify.latency.p50"
P99 = "notify.latency.p99"
RATE = 100.0
COUNT = 1_000
QUICK_COUNT = 300


async def notify_latency(
    bus: Bus, settings: Settings, count: int = COUNT, rate: float = RATE
) -> list[Row]:
    """p50 and p99 in ms over ``count`` requests at ``rate`` per second. ``settings`` names the
    nats-server and a data dir for notify-svc's SQLite; a master key is made up if it has none."""
    received: dict[str, float] = {}
    all_in = asyncio.Event()

    async def on_hook(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        if "webhook-signature" in request.headers:
            received.setdefault(body["data"]["request_id"], time.perf_counter())
            if len(received) >= count:
                all_in.set()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", on_hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]

    svc_settings = settings.model_copy(
        update={
            "master_key": settings.master_key or base64.b64encode(secrets.token_bytes(32)).decode(),
        }
    )
    tenant = "notify-bench-" + secrets.token_hex(4)
    pub = EventPublisher(bus.js, "/epm/bench")
    await pub.append(tenant, [TenantCreated(tenant_id=tenant, name=tenant, created_by="bench")], 0)
    # the receiver listens on loopback, which notify-svc refuses to call unless told it is
    # a lab (README.md, "Notification targets are public hosts")
    os.environ["EPM_NOTIFY_ALLOW_PRIVATE_WEBHOOKS"] = "true"
    service = await start_service(DEFINITION, svc_settings)
    try:
        await service.ctx.projector("store").wait_caught_up(timeout=600)
        await call(
            bus.nc,
            "notify-svc",
            "add_channel",
            {"tenant": tenant, "kind": "webhook", "url": f"http://127.0.0.1:{port}/hook"},
            SYSTEM,
        )
        sent_at: dict[str, float] = {}
        now = datetime.now(UTC)
        app_info = AppInfo(file_name="setup.exe", sha256="c" * 64, publisher="Contoso")

        async def create(request_id: str) -> None:
            event = RequestCreated(
                request_id=request_id,
                device_id="pc-1",
                user="bob",
                app=app_info,
                created_at=now,
                expires_at=now + timedelta(days=4),
            )
            sent_at[request_id] = time.perf_counter()
            await pub.append(tenant, [event], 0)

        tasks = []
        started = time.perf_counter()
        for i in range(count):
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(create(f"req-bench-{i:06d}")))
        await asyncio.gather(*tasks)
        async with asyncio.timeout(60 + count / rate):
            await all_in.wait()
    finally:
        await service.stop()
        await runner.cleanup()
    latencies = sorted((received[r] - t) * 1000 for r, t in sent_at.items())
    return [
        Row(P50, round(percentile(latencies, 0.50), 1), "ms"),
        Row(P99, round(percentile(latencies, 0.99), 1), "ms", target="<100"),
    ]


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, int(len(ordered) * q + 0.5) - 1))]


async def _alone(quick: bool, workdir: Path) -> list[Row]:
    from epm_service.bus import connect
    from epm_service.natsserver import NatsServer
    from epm_service.streams import apply_streams

    with NatsServer(workdir / "nats") as server:
        settings = Settings(nats_url=server.url, data_dir=workdir / "data")
        bus = await connect(settings, name="bench")
        try:
            await apply_streams(bus.js)
            return await notify_latency(bus, settings, QUICK_COUNT if quick else COUNT)
        finally:
            await bus.close()


def main() -> None:
    import argparse
    import tempfile

    from bench.results import table

    parser = argparse.ArgumentParser(prog="python -m bench.notify_latency", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="epm-bench-notify-") as tmp:
        import uvloop

        rows = uvloop.run(_alone(args.quick, Path(tmp)))
    print(table(rows))


if __name__ == "__main__":
    main()
