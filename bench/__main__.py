"""``python -m bench [--quick]``: start a nats-server, measure, write bench/results.json.

Order of a run: the publish ceiling (pre-built events to a stream like
EPM_EVENTS), EventPublisher.publish of the same events into EPM_EVENTS (they
are the audit input), the consume ceiling over them, the audit ingest over
them, the request ceiling. Throughput rows are the best of a few repeats, the
ceilings too, so a ratio compares best with best.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from epm_events.streams import EVENTS
from epm_service.bus import connect
from epm_service.natsserver import NatsServer
from epm_service.publisher import EventPublisher
from epm_service.settings import Settings
from epm_service.streams import apply_streams

from bench import ceilings
from bench.audit_ingest import INGEST, audit_ingest
from bench.results import Row, compared, table, write
from bench.workload import workload

RESULTS = Path(__file__).parent / "results.json"
EVENTS_PUBLISH = "events.publish"


async def best_of(repeats: int, run: Callable[[int], Awaitable[float]]) -> float:
    return max([await run(i) for i in range(repeats)])


async def run(quick: bool, workdir: Path) -> list[Row]:
    n = 20_000 if quick else 100_000
    repeats = 2 if quick else 3
    requests = 2_000 if quick else 10_000
    with NatsServer(workdir / "nats") as server:
        settings = Settings(nats_url=server.url, data_dir=workdir / "data")
        bus = await connect(settings, name="bench")
        responder = await connect(settings, name="bench-responder")
        try:
            await apply_streams(bus.js)
            say(f"building {n:,} events")
            events = workload(n)

            async def publish_raw(_: int) -> float:
                return (await ceilings.publish_ceiling(bus, events)).value

            publish = Row(ceilings.PUBLISH, round(await best_of(repeats, publish_raw), 1), "msg/s")
            say(f"{publish.name}: {publish.value:,.0f} {publish.unit}")

            # Once only: a second publish of the same ids would be deduplicated.
            publisher = EventPublisher(bus.js, "/epm/bench")
            envelopes = [p.envelope for p in events]
            started = time.perf_counter()
            await publisher.publish(envelopes)
            epm_publish = compared(
                EVENTS_PUBLISH, n / (time.perf_counter() - started), "msg/s", publish, ">=0.5"
            )
            say(f"{epm_publish.name}: {epm_publish.value:,.0f} {epm_publish.unit}")
            last = (await bus.js.stream_info(EVENTS.name)).state.last_seq
            assert last == n, f"EPM_EVENTS holds {last} events, expected {n}"

            async def consume(_: int) -> float:
                return (await ceilings.consume_ceiling(bus, n)).value

            consume_row = Row(ceilings.CONSUME, round(await best_of(repeats, consume), 1), "msg/s")
            say(f"{consume_row.name}: {consume_row.value:,.0f} {consume_row.unit}")

            async def ingest(i: int) -> float:
                return await audit_ingest(bus, workdir / f"audit-{i}.sqlite", n)

            ingest_row = compared(
                INGEST, await best_of(repeats, ingest), "msg/s", consume_row, ">=0.5"
            )
            say(f"{ingest_row.name}: {ingest_row.value:,.0f} {ingest_row.unit}")

            request, request_p99 = await ceilings.request_ceiling(bus, responder, requests)
        finally:
            await responder.close()
            await bus.close()
    return [consume_row, publish, request, request_p99, ingest_row, epm_publish]


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smaller run (a few minutes)")
    parser.add_argument("--no-uvloop", action="store_true", help="plain asyncio event loop")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results file")
    args = parser.parse_args()
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
