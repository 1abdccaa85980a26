"""``python -m bench [--quick]``: start a nats-server, measure, write bench/results.json.

Order of a run: the publish ceiling (pre-built events to a stream like
EPM_EVENTS), EventPublisher.publish of the same events into EPM_EVENTS (they
are the audit input), the consume ceiling over them, the audit ingest over
them (and the Projector with a projection that writes nothing, to show what
the Projector itself costs), an export of that trail page after page over NATS,
the stream grown to 1,000,000 events (QUICK: 100,000) and a deleted audit
projection rebuilt from it beside a consume ceiling over the same events, the
request ceiling, request created -> webhook received through notify-svc;
then the pure-CPU rows (rule evaluation, offline codes). Rows with no
raw-client ceiling carry a target on their value. Throughput rows are the best of a few repeats, the
ceilings too, so a ratio compares best with best; each is interleaved with its
ceiling, so both meet the same machine (this one is shared and 2-core).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import tempfile
import time
from pathlib import Path

from epm_events.streams import EVENTS
from epm_service.bus import Bus, connect
from epm_service.natsserver import NatsServer
from epm_service.publisher import EventPublisher
from epm_service.runtime import tune_gc
from epm_service.settings import Settings
from epm_service.streams import apply_streams
from nats.js.errors import NotFoundError

from bench import ceilings
from bench.audit_ingest import (
    EXPORT,
    INGEST,
    PASSTHROUGH,
    REBUILD,
    audit_ingest,
    export_rate,
    grow_stream,
    passthrough,
)
from bench.notify_latency import COUNT as NOTIFY_COUNT
from bench.notify_latency import QUICK_COUNT, notify_latency
from bench.offline_codes import offline_codes
from bench.online_request import online_request
from bench.replay import replay_rows
from bench.results import Row, compared, table, write
from bench.rules_eval import rules_eval
from bench.workload import workload

RESULTS = Path(__file__).parent / "results.json"
EVENTS_PUBLISH = "events.publish"
REBUILD_CEILING = "ceiling.consume.rebuild"


async def run(quick: bool, workdir: Path) -> list[Row]:
    n = 20_000 if quick else 100_000
    rebuild_n = 100_000 if quick else 1_000_000
    repeats = 2 if quick else 3
    requests = 2_000 if quick else 10_000
    with NatsServer(workdir / "nats") as server:
        settings = Settings(nats_url=server.url, data_dir=workdir / "data")
        bus = await connect(settings, name="bench")
        responder = await connect(settings, name="bench-responder")
        try:
            say(f"building {n:,} events")
            events = workload(n)
            # The prepared events live through the whole run: keep the collector from
            # walking them again and again, which would tax whatever is measured next;
            # and collect as the services do (epm_service.runtime.tune_gc).
            tune_gc()
            envelopes = [p.envelope for p in events]
            publisher = EventPublisher(bus.js, "/epm/bench")
            raw_publish: list[float] = []
            epm_publish: list[float] = []
            for _ in range(repeats):  # interleaved, so both see the same machine
                raw_publish.append((await ceilings.publish_ceiling(bus, events)).value)
                await fresh_events_stream(bus)
                started = time.perf_counter()
                await publisher.publish(envelopes)
                epm_publish.append(n / (time.perf_counter() - started))
                say(
                    f"publish: ceiling {raw_publish[-1]:,.0f}, EventPublisher {epm_publish[-1]:,.0f}"
                )
            publish = Row(ceilings.PUBLISH, round(max(raw_publish), 1), "msg/s")
            publish_row = compared(EVENTS_PUBLISH, max(epm_publish), "msg/s", publish, ">=0.5")
            last = (await bus.js.stream_info(EVENTS.name)).state.last_seq
            assert last == n, f"EPM_EVENTS holds {last} events, expected {n}"

            raw_consume: list[float] = []
            bare: list[float] = []
            ingest: list[float] = []
            for i in range(repeats):
                raw_consume.append((await ceilings.consume_ceiling(bus, n)).value)
                bare.append(await passthrough(bus, workdir / f"passthrough-{i}.sqlite", n))
                ingest.append(await audit_ingest(bus, workdir / f"audit-{i}.sqlite", n))
                say(
                    f"consume: ceiling {raw_consume[-1]:,.0f}, projector passthrough "
                    f"{bare[-1]:,.0f}, audit ingest {ingest[-1]:,.0f}"
                )
            consume = Row(ceilings.CONSUME, round(max(raw_consume), 1), "msg/s")
            ingest_row = compared(INGEST, max(ingest), "msg/s", consume, ">=0.5")
            bare_row = compared(PASSTHROUGH, max(bare), "msg/s", consume)

            say("audit export, page after page over NATS")
            export = export_rate(bus, workdir / "audit-0.sqlite", n)
            export_row = compared(EXPORT, await export, "records/s", consume)

            say(f"growing EPM_EVENTS to {rebuild_n:,} events for the rebuild")
            await grow_stream(bus, events, rebuild_n)
            raw_rebuild = (await ceilings.consume_ceiling(bus, rebuild_n)).value
            rebuilt = await audit_ingest(bus, workdir / "rebuilt.sqlite", rebuild_n)
            say(f"rebuild of {rebuild_n:,}: ceiling {raw_rebuild:,.0f}, audit {rebuilt:,.0f}")
            rebuild_ceiling = Row(REBUILD_CEILING, round(raw_rebuild, 1), "msg/s")
            rebuild_row = compared(REBUILD, rebuilt, "msg/s", rebuild_ceiling, ">=0.5")

            request, request_p99 = await ceilings.request_ceiling(bus, responder, requests)

            say("request created -> webhook received (notify-svc)")
            await fresh_events_stream(bus)
            notify_settings = Settings(nats_url=server.url, data_dir=workdir / "notify")
            notify = await notify_latency(
                bus, notify_settings, QUICK_COUNT if quick else NOTIFY_COUNT
            )
            say("online request answered by a rule (request-svc and approval-svc processes)")
            await fresh_events_stream(bus)
            online = await online_request(
                bus,
                workdir / "online",
                1_000 if quick else 5_000,
                ceiling_p99_us=request_p99.value,
                server_pid=server.proc.pid if server.proc else None,
            )
        finally:
            await responder.close()
            await bus.close()
    say("replay storm: every device reconnects at once and uploads its offline log")
    replay = await replay_rows(quick, workdir / "replay")
    say("rule evaluation with 100,000 rules")
    rules = rules_eval(requests=5_000 if quick else 20_000)
    say("offline codes")
    codes = offline_codes(runs=5_000 if quick else 20_000)
    return [
        consume,
        publish,
        request,
        request_p99,
        ingest_row,
        bare_row,
        rebuild_ceiling,
        rebuild_row,
        export_row,
        publish_row,
        *notify,
        *online,
        *replay,
        *rules,
        *codes,
    ]


async def fresh_events_stream(bus: Bus) -> None:
    """An empty EPM_EVENTS, so every publish repeat starts alike and ids are new to it."""
    with contextlib.suppress(NotFoundError):
        await bus.js.delete_stream(EVENTS.name)
    await apply_streams(bus.js)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smaller run (a few minutes)")
    parser.add_argument("--no-uvloop", action="store_true", help="plain asyncio event loop")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results file")
    args = parser.parse_args()
    logging.getLogger("epm_service.bus").setLevel(logging.ERROR)  # "disconnected" at close
    with tempfile.TemporaryDirectory(prefix="epm-bench-") as tmp:
        coro = run(args.quick, Path(tmp))
        if args.no_uvloop:
            rows = asyncio.run(coro)
        else:
            import uvloop

            rows = uvloop.run(coro)
    write(rows, args.out)
    print(table(rows))
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
