"""Commands over NATS request/reply: ``epm.rpc.<service>.<command>``.

A service registers one table ``{command name: handler}``; the server runs each
request in its own task (a slow command never blocks the next), and replies
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": {status, title, detail}}``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from epm_events.ids import InvalidId
from epm_events.subjects import rpc_service_filter, rpc_subject
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from epm_service.errors import CommandError, Invalid, Unavailable
from epm_service.metrics import RPC_SECONDS
from epm_service.natsfast import core_callback
from epm_service.principal import Principal

log = logging.getLogger(__name__)

CommandHandler = Callable[[dict[str, Any], Principal], Awaitable[Any]]


class RpcServer:
    def __init__(self, nc: Client, service: str, handlers: Mapping[str, CommandHandler]) -> None:
        self.nc = nc
        self.service = service
        self.handlers = dict(handlers)
        self._sub: Any = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(
            rpc_service_filter(self.service), queue=self.service, cb=self._on_msg
        )
        # Once start() returns, the server knows the subscription: no "no responders" race.
        await self.nc.flush()

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    async def _on_msg(self, msg: Msg) -> None:
        task = asyncio.create_task(self._handle(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, msg: Msg) -> None:
        command = msg.subject.rsplit(".", 1)[-1]
        started = time.perf_counter()
        outcome = "ok"
        try:
            handler = self.handlers.get(command)
            if handler is None:
                raise CommandError(f"{self.service} has no command {command!r}", status=404)
            try:
                body = orjson.loads(msg.data) if msg.data else {}
                principal = Principal.from_dict(body["principal"])
            except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                raise Invalid(
                    f"malformed command ({type(exc).__name__}: {exc}): send a JSON object "
                    '{"args": {...}, "principal": {...}}, as epm_service.rpc.call does'
                ) from None
            result = await handler(body.get("args") or {}, principal)
            reply: dict[str, Any] = {"ok": True, "result": result}
        except CommandError as exc:
            outcome = "refused"
            reply = {"ok": False, "error": exc.to_dict()}
        except InvalidId as exc:
            outcome = "refused"
            reply = {"ok": False, "error": Invalid(str(exc)).to_dict()}
        except Exception as exc:
            outcome = "error"
            log.exception("command failed", extra={"command": command, "service": self.service})
            reply = {
                "ok": False,
                "error": {
                    "status": 500,
                    "title": "Internal error",
                    "detail": f"{type(exc).__name__}: {exc}",
                },
            }
        RPC_SECONDS.labels(self.service, command, outcome).observe(time.perf_counter() - started)
        if msg.reply:
            await self.nc.publish(msg.reply, orjson.dumps(reply, default=str))


async def call(
    nc: Client,
    service: str,
    command: str,
    args: dict[str, Any],
    principal: Principal,
    timeout: float = 10.0,
) -> Any:
    """Send a command; returns its result or raises the CommandError it answered with."""
    try:
        payload = orjson.dumps({"args": args, "principal": principal.to_dict()}, default=str)
    except orjson.JSONEncodeError as exc:  # e.g. an integer beyond 64 bits from a client
        raise Invalid(f"the request cannot be sent on: {exc}; use smaller values") from None
    try:
        data = await _caller(nc).request(rpc_subject(service, command), payload, timeout)
    except NoRespondersError:
        raise Unavailable(
            f"{service} is not running; start it (epm dev starts everything)"
        ) from None
    except (NatsTimeout, TimeoutError):
        raise Unavailable(f"{service} did not answer within {timeout:g}s; try again") from None
    reply = orjson.loads(data)
    if reply.get("ok"):
        return reply.get("result")
    raise CommandError.from_dict(reply.get("error") or {})


class Caller:
    """Request/reply for ``call``, one per connection: nats-py's ``request`` makes a future,
    a ``wait_for`` and a ``Msg`` per call and hands the reply over through its queue; here
    the replies reach their waiting futures in the read loop (``core_callback``), as an
    append's acknowledgement does (docs/decisions.md 19). The reply subscription is under
    the connection's own inbox prefix, so a NATS user that may only read its inbox still
    gets its replies."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self._inbox = ""
        self._sub: Any = None
        self._waiting: dict[str, asyncio.Future[bytes]] = {}
        self._next = 0

    async def request(self, subject: str, payload: bytes, timeout: float) -> bytes:
        """The reply's data; NoRespondersError, or TimeoutError after ``timeout`` seconds."""
        if self._sub is None:
            inbox = self.nc.new_inbox()
            self._sub = await self.nc.subscribe(f"{inbox}.*", cb=core_callback(self._on_reply))
            self._inbox = f"{inbox}."
        self._next += 1
        token = str(self._next)
        reply = self._inbox + token
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting[token] = fut
        try:
            await self.nc.publish(subject, payload, reply=reply)
            async with asyncio.timeout(timeout):
                return await fut
        finally:
            del self._waiting[token]

    def _on_reply(self, subject: str, data: bytes, status: str | None) -> None:
        fut = self._waiting.get(subject[subject.rfind(".") + 1 :])
        if fut is None or fut.done():
            return  # a call that gave up (timed out) already
        if status == "503":
            fut.set_exception(NoRespondersError())
        else:
            fut.set_result(data)


_CALLERS: weakref.WeakKeyDictionary[Client, Caller] = weakref.WeakKeyDictionary()


def _caller(nc: Client) -> Caller:
    caller = _CALLERS.get(nc)
    if caller is None:
        caller = _CALLERS[nc] = Caller(nc)
    return caller
