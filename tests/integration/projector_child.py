"""A projector in its own process, so a test can SIGKILL it mid-batch and start it again.

    python projector_child.py NATS_URL DB_PATH [--max-batch N] [--hold-at SEQ --marker PATH]

It projects every TenantCreated into ``applied`` (event id, stream sequence)
with no uniqueness constraint, so an event applied twice would show as two
rows. ``--hold-at SEQ`` makes the handler, inside the open transaction of the
batch holding SEQ, touch ``--marker`` and then wait: the parent kills it right
there, mid-batch. SIGTERM stops it cleanly (exit code 0).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path

from epm_events.catalog import Event, TenantCreated
from epm_service.bus import connect
from epm_service.projection import Applied, Handler, Projection, Projector
from epm_service.settings import Settings


class AppliedLog(Projection):
    """Every applied event, one row each: duplicates would be visible."""

    name = "applied-log"
    schema = """
    CREATE TABLE IF NOT EXISTS applied (event_id TEXT NOT NULL, seq INTEGER NOT NULL, name TEXT);
    """

    def __init__(self, hold_at: int = 0, marker: Path | None = None) -> None:
        self.hold_at = hold_at
        self.marker = marker

    def handlers(self) -> Mapping[type[Event], Handler]:
        return {TenantCreated: self.on_tenant_created}

    def on_tenant_created(self, conn: sqlite3.Connection, e: TenantCreated, at: Applied) -> None:
        conn.execute(
            "INSERT INTO applied (event_id, seq, name) VALUES (?, ?, ?)",
            (at.env.id, at.seq, e.name),
        )
        if at.seq == self.hold_at and self.marker is not None:
            self.marker.touch()
            time.sleep(60)  # the parent SIGKILLs us here, inside the batch's transaction


async def run(args: argparse.Namespace) -> None:
    bus = await connect(Settings(nats_url=args.nats_url), name="projector-child")
    projection = AppliedLog(args.hold_at, Path(args.marker) if args.marker else None)
    projector = Projector(
        bus.js, projection, Path(args.db), service="test-child", max_batch=args.max_batch
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await projector.start()
    await stop.wait()
    await projector.stop()
    await bus.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("nats_url")
    parser.add_argument("db")
    parser.add_argument("--max-batch", type=int, default=500)
    parser.add_argument("--hold-at", type=int, default=0)
    parser.add_argument("--marker", default="")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
