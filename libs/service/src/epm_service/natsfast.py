"""Faster receiving for nats-py, the same behaviour (installed by ``epm_service.bus``).

Three replacements:

- **Header parsing.** nats-py 2.16 parses every received message's headers in Python and
  checks each header name for whitespace with ``any(c.isspace() for c in key)``: a
  generator step per character, about 45 for
  ``Nats-Expected-Last-Subject-Sequence-Subject``. On every JetStream delivery,
  acknowledgement and reply that was a fifth of a service's CPU time (cProfile at 500
  online requests/s, bench/README.md). ``parse_header_lines`` gives the same dict for
  every input (``tests/unit/test_natsfast.py`` compares the two on generated header
  blocks); only the whitespace test is one regular-expression search.
- **Dispatch** (``ordered_callback``, ``core_callback``): see below.
- **Protocol parsing** (``parse``): MSG and HMSG, the commands that carry messages, are
  read with ``bytes.find`` and ``split`` at an offset into what the socket gave, instead
  of nats-py's regular expressions (two per HMSG: MSG's fails first) and a ``del`` at
  the front of its buffer per field: 2.7 -> 1.4 µs per message. Every other command
  (PING, PONG, +OK, -ERR, INFO) and anything unexpected goes to nats-py's parser as
  before; ``tests/unit/test_natsfast.py`` feeds both the same commands, cut anywhere.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, NamedTuple

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.transport import TcpTransport
from nats.errors import ProtocolError
from nats.js.api import Header
from nats.protocol.parser import (
    AWAITING_CONTROL_LINE,
    AWAITING_MSG_PAYLOAD,
    Parser,
)

MSG_ID = "Nats-Msg-Id"
STATUS = Header.STATUS.value

_CRLF = b"\r\n"
_WHITESPACE = re.compile(r"\s")
"""``str.isspace`` and ``\\s`` agree on every character a header name can hold (ASCII)."""

ORIGINAL_PARSE_HEADER_LINES = Client._parse_header_lines
ORIGINAL_PROCESS_MSG = Client._process_msg
ORIGINAL_PARSE = Parser.parse


def parse_header_lines(raw: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    search = _WHITESPACE.search
    for line in raw.split(_CRLF):
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        try:
            key = name.strip().decode("ascii")
        except UnicodeDecodeError:
            continue
        if search(key) is not None:
            continue
        out[key] = value.strip().decode("utf-8", "replace")
    return out


# --- messages handed straight to a subscriber -------------------------------------------
#
# nats-py turns every received message into a ``Msg``, puts it on the subscription's
# asyncio.Queue and lets the subscription's task take it off and call the callback: one
# loop hop per message, and for a JetStream message the reply subject parsed twice more.
# A subscription whose callback is made by ``ordered_callback`` or ``core_callback`` gets
# its messages right in the read loop, synchronously, in order: a projection's consumer
# 12 -> 6.5-7.6 µs of CPU per message (bench/README.md). Everything else, and every
# status message (heartbeats, flow control, 503), still goes nats-py's way.


class AckReply(NamedTuple):
    """What a JetStream message's reply (acknowledgement) subject says of it."""

    stream_seq: int
    consumer_seq: int
    timestamp_ns: int
    pending: int


def parse_ack_reply(reply: str) -> AckReply:
    """The fields of a JetStream ack subject. Cheaper than ``Msg.metadata`` (no datetime
    per message) and exact to the nanosecond, which the audit chain hashes.

    v1: $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
    v2: $JS.ACK.<domain>.<acchash>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>...
    """
    if reply.count(".") == 8:
        _, sseq, cseq, ts, pending = reply.rsplit(".", 4)
        return AckReply(int(sseq), int(cseq), int(ts), int(pending))
    t = reply.split(".")
    return AckReply(int(t[7]), int(t[8]), int(t[9]), int(t[10]))


OrderedHandler = Callable[[str, AckReply, bytes, str | None], None]
"""``(subject, its ack subject's fields, data, Nats-Msg-Id)`` of a JetStream message. It
must not block: it runs in the read loop, and every other subscription of the connection
(replies included) waits behind it."""
CoreHandler = Callable[[str, bytes, str | None], None]
"""``(subject, data, status)`` of a core message; ``status`` is the inline status of a
status message (``"503"``: no responders), else None."""

_DIRECT = "__epm_direct__"
_MSG_ID = b"\r\nNats-Msg-Id:"
_SPACE = 32
_STATUS_AT = len(b"NATS/1.0")


def ordered_callback(handle: OrderedHandler) -> Callable[[Msg], Awaitable[None]]:
    """A callback for ``js.subscribe(..., ordered_consumer=True, cb=...)`` whose data
    messages reach ``handle`` without a Msg or a queue. Messages that arrive before
    nats-py has set the subscription up, and those queued behind them, still come
    through the returned callback (nats-py's way), so order holds."""

    async def callback(msg: Msg) -> None:
        hdrs = msg.headers
        handle(
            msg.subject, parse_ack_reply(msg.reply), msg.data, hdrs.get(MSG_ID) if hdrs else None
        )

    setattr(callback, _DIRECT, (True, handle))
    return callback


def core_callback(handle: CoreHandler) -> Callable[[Msg], Awaitable[None]]:
    """A callback for ``nc.subscribe(..., cb=...)`` (replies, acknowledgements) whose
    messages, status messages included, reach ``handle`` without a Msg or a queue."""

    async def callback(msg: Msg) -> None:
        hdrs = msg.headers
        handle(msg.subject, msg.data, hdrs.get(STATUS) if hdrs else None)

    setattr(callback, _DIRECT, (False, handle))
    return callback


def msg_id_of(headers: bytes) -> str | None:
    """``Nats-Msg-Id`` from a raw header block, as ``parse_header_lines`` would give it."""
    at = headers.find(_MSG_ID)
    if at < 0:
        return None
    start = at + len(_MSG_ID)
    end = headers.find(_CRLF, start)
    return headers[start:end].strip().decode("utf-8", "replace")


def _status_of(headers: bytes) -> str | None:
    if len(headers) > _STATUS_AT and headers[_STATUS_AT] == _SPACE:
        return headers[_STATUS_AT + 1 : _STATUS_AT + 4].decode("ascii", "replace")
    return None


async def _process_msg(
    self: Client, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes
) -> None:
    sub = self._subs.get(sid)
    direct = getattr(sub._cb, _DIRECT, None) if sub is not None and sub._cb else None
    if direct is None or sub is None or sub._pending_queue.qsize() or sub._max_msgs > 0:
        return await ORIGINAL_PROCESS_MSG(self, sid, subject, reply, data, headers)
    ordered, handle = direct
    status = _status_of(headers) if headers else None
    jsi = sub._jsi
    if (
        # an ordered consumer's data message, once nats-py has set the consumer up
        ordered and (status is not None or jsi is None or not jsi._ordered or not reply)
    ) or (not ordered and jsi is not None):  # a core handler on a core subscription only
        return await ORIGINAL_PROCESS_MSG(self, sid, subject, reply, data, headers)
    self.stats["in_msgs"] += 1
    self.stats["in_bytes"] += len(data)
    sub._received += 1
    try:
        if jsi is None:
            handle(subject.decode(), data, status)
            return
        # nats-py's ordered-consumer bookkeeping (Client._process_msg), the reply parsed once
        r = reply.decode()
        ack = parse_ack_reply(r)
        jsi._active = True
        if ack.consumer_seq != jsi._dseq:
            await jsi.reset_ordered_consumer(jsi._sseq + 1)
            return
        jsi._dseq = ack.consumer_seq + 1
        jsi._sseq = ack.stream_seq
        jsi.track_sequences(r)
        handle(subject.decode(), ack, data, msg_id_of(headers) if headers else None)
    except Exception as exc:  # as nats-py reports a callback's error
        await self._error_cb(exc)


# --- a command written at once -----------------------------------------------------------
#
# ``Client.publish`` appends its command to nats-py's pending buffer and wakes the flusher
# task, which writes the buffer in its next turn: the publishes of one loop turn share a
# write. Services keep that (each write to a loopback socket costs the sender the
# receiver's side of TCP as well: one write per message moved about 150 µs of CPU per
# online request into nats-server, bench/README.md "Online request", session 6). The
# online bench's simulated devices write each request at once: on their own machines
# each would be a write of its own.


def write_now(nc: Client, command: bytes) -> bool:
    """Write ``command`` to the socket now, if nothing is ahead of it (nats-py's pending
    buffer and the socket's write buffer both empty: order and back-pressure as the flusher
    keeps them). False if not; then send it nats-py's way (``Client.publish``)."""
    transport = nc._transport
    if nc._pending or not nc.is_connected or type(transport) is not TcpTransport:
        return False
    writer = transport._io_writer
    if writer is None or writer.transport.get_write_buffer_size():
        return False
    writer.write(command)
    return True


_SUBJECT_REFUSED = re.compile(r"[ \t\r\n]")
"""What nats-py refuses in a subject it publishes (besides an empty one)."""


@functools.lru_cache(maxsize=4096)
def plain_subject(subject: str) -> bool:
    """A subject nats-py publishes unchanged (not empty, no space or line break): one that
    may be written into a protocol command as it is."""
    return bool(subject) and _SUBJECT_REFUSED.search(subject) is None


# --- the protocol parser -------------------------------------------------------------


async def parse(self: Parser, data: bytes = b"") -> None:
    """``Parser.parse`` with MSG and HMSG read at an offset into ``data`` (see the module's
    doc): the same calls of ``nc._process_msg``, in the same order, for any cut of the
    stream into reads. The parser's state (``buf``, ``state``, ``needed``,
    ``header_needed``, ``msg_arg``) means what it means to nats-py, so either parser
    can go on where the other stopped."""
    buf = self.buf
    if buf:
        buf.extend(data)
        data = bytes(buf)
        buf.clear()
    pos, size = 0, len(data)
    nc = self.nc
    while pos < size:
        if self.state == AWAITING_MSG_PAYLOAD:
            needed = self.needed
            if size - pos < needed + 2:
                break
            h = self.header_needed
            arg = self.msg_arg
            hdr = data[pos : pos + h] if h else None
            payload = data[pos + h : pos + needed]
            pos += needed + 2
            self.header_needed = 0
            self.state = AWAITING_CONTROL_LINE
            await nc._process_msg(arg["sid"], arg["subject"], arg["reply"], payload, hdr)
            continue
        if data.startswith(b"HMSG ", pos):
            with_headers = True
        elif data.startswith(b"MSG ", pos):
            with_headers = False
        else:  # any other command: nats-py's way, from here to the end of what is read
            buf.extend(data[pos:] if pos else data)
            await ORIGINAL_PARSE(self)
            return
        eol = data.find(_CRLF, pos)
        if eol < 0:
            break  # the rest of the line is still on its way
        subject, sid, reply, h, needed = _msg_args(data[pos:eol].split(), with_headers)
        start = eol + 2
        if size - start >= needed + 2:  # the whole message is here: no state to keep
            hdr = data[start : start + h] if h else None
            payload = data[start + h : start + needed]
            pos = start + needed + 2
            await nc._process_msg(sid, subject, reply, payload, hdr)
            continue
        self.msg_arg["subject"] = subject
        self.msg_arg["sid"] = sid
        self.msg_arg["reply"] = reply
        self.needed = needed
        self.header_needed = h
        self.state = AWAITING_MSG_PAYLOAD
        pos = start
    if pos < size:
        buf.extend(data[pos:] if pos else data)


def _msg_args(args: list[bytes], with_headers: bool) -> tuple[bytes, int, bytes, int, int]:
    """(subject, sid, reply, header bytes, total bytes) of ``MSG <subject> <sid> [reply]
    <total>`` or ``HMSG <subject> <sid> [reply] <header bytes> <total>``."""
    try:
        if with_headers:
            if len(args) == 6:
                _, subject, sid, reply, h, total = args
            else:
                _, subject, sid, h, total = args
                reply = b""
            return subject, int(sid), reply, int(h), int(total)
        if len(args) == 5:
            _, subject, sid, reply, total = args
        else:
            _, subject, sid, total = args
            reply = b""
        return subject, int(sid), reply, 0, int(total)
    except ValueError:
        raise ProtocolError("nats: malformed MSG") from None


_PATCHES: tuple[tuple[type, str, Any, Any], ...] = (
    # (class, attribute, nats-py's, this module's)
    (
        Client,
        "_parse_header_lines",
        staticmethod(ORIGINAL_PARSE_HEADER_LINES),
        staticmethod(parse_header_lines),
    ),
    (Client, "_process_msg", ORIGINAL_PROCESS_MSG, _process_msg),
    (Parser, "parse", ORIGINAL_PARSE, parse),
)


@contextlib.contextmanager
def pristine() -> Iterator[None]:
    """nats-py as it ships, within the block: the raw-client ceilings of ``bench/`` measure
    the library, not this module (DESIGN.md: "what nats-py can do with no framework").
    Whatever was there before is put back after it."""
    before = [(cls, name, vars(cls)[name]) for cls, name, _, _ in _PATCHES]
    for cls, name, theirs, _ in _PATCHES:
        setattr(cls, name, theirs)
    try:
        yield
    finally:
        for cls, name, attr in before:
            setattr(cls, name, attr)


def install() -> None:
    """Replace nats-py's header parser, message dispatch and protocol parser, once per
    process; idempotent."""
    for cls, name, _, ours in _PATCHES:
        setattr(cls, name, ours)
