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
import logging
import sqlite3
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from nats.js import JetStreamContext

from epm_service.natsfast import MSG_ID
from epm_service.projection import Projector, open_db
from epm_service.publisher import BulkPublisher
from epm_service.worker import TaskWorker

log = logging.getLogger(__name__)

T = TypeVar("T")

COALESCE_SECONDS = 0.005

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


class OutboxRelay(TaskWorker):
    """Publishes a projection's committed outbox rows, in order, after each batch."""

    def __init__(self, js: JetStreamContext, projector: Projector, batch: int = 1000) -> None:
        self.js = js
        self.projector = projector
        self.batch = batch
        self.task_name = f"outbox-{projector.path.name}"
        self._conn: sqlite3.Connection | None = None
        self._loop_conn: sqlite3.Connection | None = None
        # One thread owns the connection: a query still running when the task is
        # cancelled must finish before the connection is closed (closing it under a
        # running query crashes the interpreter).
        self._db = ThreadPoolExecutor(1, thread_name_prefix="outbox")
        self._publisher = BulkPublisher(js._nc)

    async def _in_db(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        assert conn is not None
        return await asyncio.get_running_loop().run_in_executor(self._db, fn, conn)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._conn = await loop.run_in_executor(self._db, _connect, self.projector.path, 10_000)
        await super().start()

    async def stop(self) -> None:
        await super().stop()
        if self._conn is not None:
            await self._in_db(lambda conn: conn.close())  # after any query still running
            self._conn = None
        if self._loop_conn is not None:
            self._loop_conn.close()
            self._loop_conn = None
        self._db.shutdown(wait=True)

    async def _run(self) -> None:
        seen = -1
        while True:
            await self.projector.wait_past(seen, timeout=1.0)
            # Under load, gather what a few more batches enqueue: one relay round (query,
            # publish, acks, delete) then carries many messages instead of one.
            await asyncio.sleep(COALESCE_SECONDS)
            seen = self.projector.position
            try:
                while await self._relay_once():
                    pass
            except Exception:
                log.exception("outbox relay failed; retrying")
                await asyncio.sleep(1)

    async def _relay_once(self) -> bool:
        import orjson

        batch = self.batch
        # Looked up right here: after most batches the outbox is empty, and this indexed
        # query costs less than a hop to the relay's thread. (Nothing else uses this
        # connection, and the loop runs one thing at a time, so it is never closed under a
        # running query.)
        if self._loop_conn is None:
            self._loop_conn = _connect(self.projector.path, 0)
        rows = self._loop_conn.execute(
            "SELECT id, subject, payload, msg_id, headers FROM _outbox ORDER BY id LIMIT ?",
            (batch,),
        ).fetchall()
        if not rows:
            return False
        messages = []
        for _id, subject, payload, msg_id, headers in rows:
            hdrs = orjson.loads(headers) if headers else {}
            hdrs[MSG_ID] = msg_id
            messages.append((subject, bytes(payload), hdrs))
        # One set, one wait (not a future and a timeout per message). A refusal or a
        # TimeoutError: the rows stay, relayed again.
        await self._publisher.publish(messages)
        last = rows[-1][0]

        def delete(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM _outbox WHERE id <= ?", (last,))  # autocommit

        try:
            delete(self._loop_conn)  # the usual case: nobody holds the write lock
        except sqlite3.OperationalError:
            # Locked by the projection's writer thread (a large batch): wait there, not here.
            await self._in_db(delete)
        return len(rows) == batch


def _connect(path: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    # The projection's own kind of connection: no sync per commit (a delete lost to a power
    # cut only relays its rows again, and Nats-Msg-Id makes that a duplicate), and no
    # checkpoint inside a commit on the loop (the projector checkpoints the file).
    return open_db(path, busy_timeout_ms=busy_timeout_ms, checkpoints=False)
