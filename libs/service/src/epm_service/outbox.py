"""The transactional outbox: messages a projection must send because of what it applied.

A handler that must tell the outside world (e.g. send a decision to a device on
EPM_DEVICE) calls ``enqueue`` inside its batch transaction; the row commits or
rolls back with the projection write and the checkpoint. ``OutboxRelay`` then
publishes committed rows to JetStream with their deterministic ``Nats-Msg-Id``
and deletes them once acknowledged. A crash between publish and delete
re-publishes the same id, which the stream's duplicate window and the
receivers' idempotency absorb. Nothing is lost; nothing is applied twice.

A projection that uses the outbox includes ``OUTBOX_SCHEMA`` in its schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Mapping
from pathlib import Path

from nats.js import JetStreamContext

from epm_service.projection import Projector

log = logging.getLogger(__name__)

OUTBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS _outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    subject TEXT NOT NULL, payload BLOB NOT NULL, msg_id TEXT NOT NULL, headers TEXT
);
"""


def enqueue(
    conn: sqlite3.Connection,
    subject: str,
    payload: bytes,
    msg_id: str,
    headers: Mapping[str, str] | None = None,
) -> None:
    import orjson

    conn.execute(
        "INSERT INTO _outbox (subject, payload, msg_id, headers) VALUES (?, ?, ?, ?)",
        (subject, payload, msg_id, orjson.dumps(dict(headers)).decode() if headers else None),
    )


class OutboxRelay:
    """Publishes a projection's committed outbox rows, in order, after each batch."""

    def __init__(self, js: JetStreamContext, projector: Projector, batch: int = 1000) -> None:
        self.js = js
        self.projector = projector
        self.batch = batch
        self._task: asyncio.Task[None] | None = None
        self._conn: sqlite3.Connection | None = None

    async def start(self) -> None:
        self._conn = _connect(self.projector.path)
        self._task = asyncio.create_task(self._run(), name=f"outbox-{self.projector.path.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._conn is not None:
            self._conn.close()

    async def _run(self) -> None:
        seen = -1
        while True:
            await self.projector.wait_for(seen + 1, timeout=1.0)
            seen = self.projector.position
            try:
                while await self._relay_once():
                    pass
            except Exception:
                log.exception("outbox relay failed; retrying")
                await asyncio.sleep(1)

    async def _relay_once(self) -> bool:
        import orjson

        assert self._conn is not None
        rows = await asyncio.to_thread(
            lambda: self._conn.execute(  # type: ignore[union-attr]
                "SELECT id, subject, payload, msg_id, headers FROM _outbox ORDER BY id LIMIT ?",
                (self.batch,),
            ).fetchall()
        )
        if not rows:
            return False
        futures = []
        for _id, subject, payload, msg_id, headers in rows:
            hdrs = orjson.loads(headers) if headers else {}
            hdrs["Nats-Msg-Id"] = msg_id
            futures.append(await self.js.publish_async(subject, payload, headers=hdrs))
        await asyncio.gather(*futures)
        last = rows[-1][0]

        def delete() -> None:
            assert self._conn is not None
            self._conn.execute("DELETE FROM _outbox WHERE id <= ?", (last,))
            self._conn.commit()

        await asyncio.to_thread(delete)
        return len(rows) == self.batch


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=10000")
    return conn
