"""The raw nats-py ceilings (DESIGN.md, "Performance targets"), measured in the same run.

No framework, no parsing, no storage, and nats-py as it ships: each ceiling runs with
``epm_service.natsfast``'s replacements taken out (``pristine``; until session 15 the
ceilings had its header parser and dispatch, which made them higher than nats-py's own):
- consume: an ordered consumer whose callback only counts;
- publish: ``publish_async`` of pre-built payloads (with their ``Nats-Msg-Id``,
  as every EPM event carries one) to a file-stored stream configured like
  EPM_EVENTS, awaiting completion every few thousand messages;
- request: core NATS request/reply round trips, one at a time.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from epm_events.streams import EVENTS, StreamSpec
from epm_service.bus import Bus
from epm_service.natsfast import MSG_ID, pristine
from epm_service.streams import apply_streams
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import ConsumerConfig, DeliverPolicy

from bench.results import Row
from bench.workload import Prepared

CONSUME = "ceiling.consume"
PUBLISH = "ceiling.publish"
REQUEST = "ceiling.request"
REQUEST_P99 = "ceiling.request.p99"

PUBLISH_WINDOW = 5000
CEILING_STREAM = StreamSpec(
    name="BENCH_CEILING",
    subjects=("ceiling.>",),
    description="Benchmark only: the publish ceiling, configured like EPM_EVENTS.",
    duplicate_window_seconds=EVENTS.duplicate_window_seconds,
)


P = ParamSpec("P")
T = TypeVar("T")


def raw_client(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Measure ``fn`` on nats-py as it ships (``natsfast.pristine``)."""

    @functools.wraps(fn)
    async def measured(*args: P.args, **kwargs: P.kwargs) -> T:
        with pristine():
            return await fn(*args, **kwargs)

    return measured


@raw_client
async def consume_ceiling(bus: Bus, count: int, stream: str = EVENTS.name) -> Row:
    """msg/s of an ordered consumer over the first ``count`` messages of ``stream``."""
    done = asyncio.Event()
    seen = 0

    async def counted(msg: Msg) -> None:
        nonlocal seen
        seen += 1
        if seen == count:
            done.set()

    started = time.perf_counter()
    sub = await bus.js.subscribe(
        ">",
        stream=stream,
        cb=counted,
        ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        pending_msgs_limit=-1,
        pending_bytes_limit=-1,
    )
    async with asyncio.timeout(300):
        await done.wait()
    elapsed = time.perf_counter() - started
    await sub.unsubscribe()
    return Row(CONSUME, round(count / elapsed, 1), "msg/s")


@raw_client
async def publish_ceiling(bus: Bus, events: list[Prepared]) -> Row:
    """msg/s of publish_async of the benchmark's own pre-built events to a stream like EPM_EVENTS."""
    await apply_streams(bus.js, specs=(CEILING_STREAM,))
    batch = [(f"ceiling.{p.subject}", p.payload, {MSG_ID: p.msg_id}) for p in events]
    js = bus.js
    started = time.perf_counter()
    for i, (subject, payload, headers) in enumerate(batch, 1):
        await js.publish_async(subject, payload, headers=headers)
        if i % PUBLISH_WINDOW == 0:
            await js.publish_async_completed()
    await js.publish_async_completed()
    elapsed = time.perf_counter() - started
    await js.delete_stream(CEILING_STREAM.name)
    return Row(PUBLISH, round(len(batch) / elapsed, 1), "msg/s")


@raw_client
async def request_ceiling(bus: Bus, responder: Bus, count: int) -> tuple[Row, Row]:
    """Sequential core request/reply: round trips per second and the p99 latency."""
    payload = b'{"tenant":"customer-001","request":"req-00000001"}'

    async def echo(msg: Msg) -> None:
        await msg.respond(msg.data)

    sub = await responder.nc.subscribe("bench.echo", cb=echo)
    await responder.nc.flush()
    # A connection that just sat through a long, CPU-bound row may be reconnecting: wait
    # (with a deadline) until the echo answers before the clock starts.
    deadline = time.monotonic() + 30
    while True:
        try:
            await bus.nc.request("bench.echo", payload, timeout=2)
            break
        except (NoRespondersError, NatsTimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
    for _ in range(200):  # warm up the connection and the reply inbox
        await bus.nc.request("bench.echo", payload, timeout=2)
    latencies: list[float] = []
    started = time.perf_counter()
    for _ in range(count):
        t = time.perf_counter()
        await bus.nc.request("bench.echo", payload, timeout=2)
        latencies.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - started
    await sub.unsubscribe()
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    return (
        Row(REQUEST, round(count / elapsed, 1), "req/s"),
        Row(REQUEST_P99, round(p99 * 1e6, 1), "µs"),
    )
