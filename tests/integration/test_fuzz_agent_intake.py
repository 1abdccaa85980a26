"""Agent intake under fuzzed input, on a real nats-server with request-svc in process.

Hypothesis generates what a broken or hostile agent might publish on EPM_AGENT:
garbage, truncated, oversized, unsigned or wrongly signed messages, replays (inside
the duplicate window, outside it, re-signed copies), messages naming another tenant
or device, foreign reply inboxes, types agents may not send. After each one a good
request from an enrolled device must still be answered, and every bad message the
stream stored must end as exactly one of: a dead letter on EPM_DLQ, a
SecurityAlertRaised, or (for a replay) nothing new. Never a second request, never a
handler failure (``processing_failed``), never a stuck consumer.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from epm_events.agent import REPLY_HEADER, SIGNATURE_HEADER, signing_bytes
from epm_events.codec import decode
from epm_events.ids import request_id_for
from epm_events.streams import AGENT, DLQ, EVENTS
from epm_events.subjects import agent_subject, device_inbox_prefix
from epm_request.intake import DURABLE
from epm_service.bus import Bus
from epm_service.deadletter import ORIGINAL_SEQ, ORIGINAL_STREAM, REASON
from epm_service.runtime import RunningService
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.msg import Msg
from nats.js.errors import APIError

from tests.integration.test_request_svc import Device, enroll, request_svc

__all__ = ["request_svc"]  # fixture, used by name

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)

DEADLINE = 15.0
SHORT_DUPLICATE_WINDOW = 0.5  # seconds: lets a replay arrive "outside the window" at once

Published = tuple[str, bytes, dict[str, str]]


def sign(key: Ed25519PrivateKey, subject: str, msg_id: str, body: bytes) -> str:
    return base64.b64encode(key.sign(signing_bytes(subject, msg_id, body))).decode()


@dataclass
class Ledger:
    """What the streams say became of each EPM_AGENT message, read incrementally."""

    bus: Bus
    dead_lettered: dict[int, str] = field(default_factory=dict)  # agent seq -> reason
    alerted_seqs: set[int] = field(default_factory=set)
    alerted_ids: set[str] = field(default_factory=set)
    created: Counter[str] = field(default_factory=Counter)  # request id -> RequestCreated
    _dlq_seen: int = 0
    _events_seen: int = 0

    async def refresh(self) -> None:
        js = self.bus.js
        last = (await js.stream_info(DLQ.name)).state.last_seq
        for seq in range(self._dlq_seen + 1, last + 1):
            msg = await js.get_msg(DLQ.name, seq, direct=True)
            h = msg.headers or {}
            if h.get(ORIGINAL_STREAM) == AGENT.name:
                self.dead_lettered[int(h[ORIGINAL_SEQ])] = h[REASON]
        self._dlq_seen = last
        last = (await js.stream_info(EVENTS.name)).state.last_seq
        for seq in range(self._events_seen + 1, last + 1):
            msg = await js.get_msg(EVENTS.name, seq, direct=True)
            subject = msg.subject or ""
            if subject.endswith(".SecurityAlertRaised"):
                evidence = decode(msg.data or b"").data["evidence"]
                self.alerted_seqs.add(int(evidence["stream_seq"]))
                self.alerted_ids.add(str(evidence["msg_id"]))
            elif subject.endswith(".RequestCreated"):
                self.created[decode(msg.data or b"").data["request_id"]] += 1
        self._events_seen = last

    def outcome(self, seq: int, msg_id: str | None) -> str | None:
        if seq in self.dead_lettered:
            return "dlq:" + self.dead_lettered[seq]
        if seq in self.alerted_seqs or (msg_id and msg_id in self.alerted_ids):
            return "alert"
        if msg_id and self.created[request_id_for(msg_id)]:
            return "request"
        return None


@dataclass
class Intake:
    bus: Bus
    dev: Device  # acme: the good messages come from it
    other: Device  # globex
    ledger: Ledger
    answers: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    good: list[Published] = field(default_factory=list)  # sent and answered
    figures: Counter[str] = field(default_factory=Counter)

    def inbox(self, device: Device) -> str:
        return device_inbox_prefix(device.tenant, device.device_id)

    def envelope(self, device: Device, msg_id: str, **changes: Any) -> dict[str, Any]:
        env: dict[str, Any] = {
            "specversion": "1.0",
            "id": msg_id,
            "source": f"/agents/{device.tenant}/{device.device_id}",
            "type": "epm.ElevationRequested.v1",
            "subject": device.device_id,
            "time": "2026-11-23T12:00:00Z",
            "tenant": device.tenant,
            "data": {
                "user": "bob",
                "reason": "fuzz",
                "app": {"file_name": "setup.exe", "sha256": "c" * 64, "publisher": "Contoso"},
            },
        }
        env.update(changes)
        return env

    def signed(self, device: Device, env: dict[str, Any], reply: bool = False) -> Published:
        body = orjson.dumps(env)
        subject = agent_subject(device.tenant, device.device_id, "ElevationRequested")
        headers = {
            "Nats-Msg-Id": env["id"],
            SIGNATURE_HEADER: sign(device.key, subject, env["id"], body),
        }
        if reply:
            headers[REPLY_HEADER] = f"{self.inbox(device)}.{env['id']}"
        return subject, body, headers

    async def send_good(self) -> dict[str, Any]:
        """A good request from the enrolled device; returns the intake's answer."""
        msg_id = str(uuid.uuid4())
        published = self.signed(self.dev, self.envelope(self.dev, msg_id), reply=True)
        future = self.answers[request_id_for(msg_id)] = asyncio.get_running_loop().create_future()
        await self.bus.js.publish(*published[:2], headers=published[2])
        answer: dict[str, Any] = await asyncio.wait_for(future, DEADLINE)
        self.good.append(published)
        return answer

    async def on_answer(self, msg: Msg) -> None:
        answer = orjson.loads(msg.data)
        future = self.answers.pop(answer["request_id"], None)
        if future is not None and not future.done():
            future.set_result(answer)


async def eventually(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + DEADLINE
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not before the deadline: {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def intake(bus: Bus, request_svc: RunningService) -> AsyncIterator[Intake]:
    info = await bus.js.stream_info(AGENT.name)
    info.config.duplicate_window = SHORT_DUPLICATE_WINDOW
    await bus.js.update_stream(info.config)
    state = Intake(bus, await enroll(bus, "acme"), await enroll(bus, "globex"), Ledger(bus))
    sub = await bus.nc.subscribe(f"{state.inbox(state.dev)}.>", cb=state.on_answer)
    await state.send_good()
    yield state
    log.info("fuzzed agent messages: %s", dict(sorted(state.figures.items())))
    with contextlib.suppress(Exception):
        await sub.unsubscribe()


# --- what a hostile or broken agent sends ----------------------------------------------

KINDS = [
    "garbage_signed",
    "garbage_unsigned",
    "truncated_resigned",
    "truncated_original_signature",
    "oversized",
    "field_too_long",
    "bad_signature",
    "missing_msg_id",
    "id_mismatch",
    "mutated_envelope",
    "subject_of_other_tenant",
    "envelope_of_other_tenant",
    "other_devices_key",
    "unknown_device",
    "invalid_subject",
    "foreign_inbox",
    "type_agents_may_not_send",
    "replay_inside_window",
    "replay_outside_window",
    "resigned_copy",
]

MUTABLE = [
    ("specversion",),
    ("id",),
    ("source",),
    ("type",),
    ("subject",),
    ("time",),
    ("tenant",),
    ("data",),
    ("data", "user"),
    ("data", "reason"),
    ("data", "app"),
    ("data", "app", "sha256"),
    ("data", "app", "file_name"),
]
json_values = st.recursive(
    # JSON integers as orjson writes them (64-bit); bigger ones cannot be sent at all
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
device_ids = st.from_regex(r"[a-z0-9][a-z0-9-]{0,20}", fullmatch=True)
bad_tokens = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=".*>"),
    min_size=1,
    max_size=12,
)


async def bad_message(s: Intake, kind: str, draw: Callable[..., Any]) -> tuple[Published, bool]:
    """(message, is a replay of a good one)."""
    dev, msg_id = s.dev, str(uuid.uuid4())
    subject = agent_subject(dev.tenant, dev.device_id, "ElevationRequested")
    _, good_body, good_headers = s.signed(dev, s.envelope(dev, msg_id))
    if kind == "garbage_signed":
        body = draw(st.binary(max_size=2048))
        return (
            subject,
            body,
            {"Nats-Msg-Id": msg_id, SIGNATURE_HEADER: sign(dev.key, subject, msg_id, body)},
        ), False
    if kind == "garbage_unsigned":
        return (subject, draw(st.binary(max_size=2048)), {"Nats-Msg-Id": msg_id}), False
    if kind.startswith("truncated"):
        body = good_body[: len(good_body) * draw(st.integers(0, 999)) // 1000]
        sig = (
            sign(dev.key, subject, msg_id, body)
            if kind.endswith("resigned")
            else good_headers[SIGNATURE_HEADER]
        )
        return (subject, body, {"Nats-Msg-Id": msg_id, SIGNATURE_HEADER: sig}), False
    if kind == "oversized":
        filler = "x" * draw(st.integers(256 * 1024, 700 * 1024))
        env = s.envelope(dev, msg_id, data={"user": "bob", "reason": filler, "app": {}})
        return s.signed(dev, env), False
    if kind == "field_too_long":
        name = draw(st.sampled_from(["user", "reason", "file_name", "command_line", "path"]))
        value = "y" * draw(st.integers(4097, 200 * 1024))  # above every field's limit
        env = s.envelope(dev, msg_id)
        (env["data"] if name in ("user", "reason") else env["data"]["app"])[name] = value
        return s.signed(dev, env), False
    if kind == "bad_signature":
        sig = draw(
            st.sampled_from(
                [
                    sign(Ed25519PrivateKey.generate(), subject, msg_id, good_body),
                    sign(dev.key, subject, msg_id, good_body + b" "),
                    sign(dev.key, subject + "x", msg_id, good_body),
                    "not base64!",
                    "",
                    base64.b64encode(b"\x00" * 64).decode(),
                    base64.b64encode(b"short").decode(),
                ]
            )
        )
        return (subject, good_body, {"Nats-Msg-Id": msg_id, SIGNATURE_HEADER: sig}), False
    if kind == "missing_msg_id":
        return (subject, good_body, {SIGNATURE_HEADER: good_headers[SIGNATURE_HEADER]}), False
    if kind == "id_mismatch":
        other_id = str(uuid.uuid4())
        return (
            subject,
            good_body,
            {
                "Nats-Msg-Id": other_id,
                SIGNATURE_HEADER: sign(dev.key, subject, other_id, good_body),
            },
        ), False
    if kind == "mutated_envelope":
        env = s.envelope(dev, msg_id)
        for path in draw(st.lists(st.sampled_from(MUTABLE), min_size=1, max_size=3)):
            target: Any = env
            for step in path[:-1]:
                target = target.get(step) if isinstance(target, dict) else None
            if isinstance(target, dict):
                if draw(st.booleans()):
                    target.pop(path[-1], None)
                else:
                    target[path[-1]] = draw(json_values)
        body = orjson.dumps(env)
        sig = sign(dev.key, subject, msg_id, body)
        return (subject, body, {"Nats-Msg-Id": msg_id, SIGNATURE_HEADER: sig}), False
    if kind == "subject_of_other_tenant":
        wrong = agent_subject(s.other.tenant, dev.device_id, "ElevationRequested")
        return (
            wrong,
            good_body,
            {"Nats-Msg-Id": msg_id, SIGNATURE_HEADER: sign(dev.key, wrong, msg_id, good_body)},
        ), False
    if kind == "envelope_of_other_tenant":
        return s.signed(dev, s.envelope(dev, msg_id, tenant=s.other.tenant)), False
    if kind == "other_devices_key":
        # globex's device speaks on acme's device subject, or on its own claiming acme
        env = s.envelope(s.other, msg_id)
        body = orjson.dumps(env)
        return (
            subject,
            body,
            {"Nats-Msg-Id": msg_id, SIGNATURE_HEADER: sign(s.other.key, subject, msg_id, body)},
        ), False
    if kind == "unknown_device":
        device = draw(device_ids.filter(lambda d: d not in (dev.device_id, s.other.device_id)))
        wrong = agent_subject(dev.tenant, device, "ElevationRequested")
        return (
            wrong,
            good_body,
            {"Nats-Msg-Id": msg_id, SIGNATURE_HEADER: sign(dev.key, wrong, msg_id, good_body)},
        ), False
    if kind == "invalid_subject":
        tokens = draw(st.lists(bad_tokens, min_size=1, max_size=4))
        wrong = "epm.agent." + ".".join(tokens)
        return (
            wrong,
            good_body,
            {"Nats-Msg-Id": msg_id, SIGNATURE_HEADER: sign(dev.key, wrong, msg_id, good_body)},
        ), False
    if kind == "foreign_inbox":
        inbox = draw(
            st.sampled_from(
                [f"{s.inbox(s.other)}.r", "_INBOX.x", f"{s.inbox(dev)}", "epm.evt.acme.x"]
            )
        )
        return (subject, good_body, {**good_headers, REPLY_HEADER: inbox}), False
    if kind == "type_agents_may_not_send":
        name = draw(
            st.sampled_from(
                ["DeviceEnrolled", "Approved", "RequestCreated", "SecurityAlertRaised", "Unknown"]
            )
        )
        wrong = agent_subject(dev.tenant, dev.device_id, name)
        env = s.envelope(dev, msg_id, type=f"epm.{name}.v1")
        body = orjson.dumps(env)
        return (
            wrong,
            body,
            {"Nats-Msg-Id": msg_id, SIGNATURE_HEADER: sign(dev.key, wrong, msg_id, body)},
        ), False
    replayed = s.good[draw(st.integers(0, 10**6)) % len(s.good)]  # drawn the same way each run
    if kind in ("replay_inside_window", "replay_outside_window"):
        return replayed, True
    # resigned_copy: the device signs another body under a message id it used before
    old_id = replayed[2]["Nats-Msg-Id"]
    env = s.envelope(
        dev,
        old_id,
        data={
            "user": "mallory",
            "reason": "again",
            "app": {"file_name": "x.exe", "sha256": "d" * 64},
        },
    )
    body = orjson.dumps(env)
    return (
        subject,
        body,
        {"Nats-Msg-Id": old_id, SIGNATURE_HEADER: sign(dev.key, subject, old_id, body)},
    ), True


async def publish_stored(s: Intake, published: Published, outside_window: bool) -> int | None:
    """Publish; the stream sequence if EPM_AGENT stored it, None if it refused or deduplicated."""
    subject, body, headers = published
    deadline = time.monotonic() + DEADLINE
    while True:
        try:
            ack = await s.bus.js.publish(subject, body, headers=headers)
        except APIError as exc:  # e.g. larger than the stream's max message size
            s.figures[f"refused by the stream ({exc.description})"] += 1
            return None
        if not ack.duplicate:
            return ack.seq
        if not outside_window:
            s.figures["dropped as duplicate"] += 1
            return None
        assert time.monotonic() < deadline, "the duplicate window never passed"
        await asyncio.sleep(0.05)


FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(kind=st.sampled_from(KINDS), data=st.data())
async def test_bad_agent_messages_are_refused_and_the_next_good_one_is_answered(
    intake: Intake, kind: str, data: st.DataObject
) -> None:
    s = intake
    published, replay = await bad_message(s, kind, data.draw)
    seq = await publish_stored(s, published, outside_window=kind != "replay_inside_window")
    answer = await s.send_good()  # the intake still answers, right behind the bad message
    assert answer["status"] == "open"
    if seq is None:
        return
    msg_id = published[2].get("Nats-Msg-Id")

    async def settled() -> str | None:
        await s.ledger.refresh()
        return s.ledger.outcome(seq, msg_id)

    outcome = await eventually(settled, f"an outcome for {kind} (EPM_AGENT seq {seq})")
    s.figures[f"{kind}: {outcome}"] += 1
    assert outcome != "dlq:processing_failed", f"{kind} made the intake fail"
    if replay:
        assert outcome == "request"  # the original one, not a new one
    elif outcome == "request":
        # a mutation that is still a valid request is a request, not an error
        assert kind == "mutated_envelope", f"{kind} became a request"
    assert all(n == 1 for n in s.ledger.created.values()), "a request was created twice"


@settings(FUZZ, max_examples=1)
@given(data=st.data())
async def test_after_a_burst_of_bad_messages_the_intake_has_nothing_pending(
    intake: Intake, data: st.DataObject
) -> None:
    for kind in KINDS:
        if kind.startswith("replay") or kind == "resigned_copy":
            continue
        published, _ = await bad_message(intake, kind, data.draw)
        await publish_stored(intake, published, outside_window=False)
    await intake.send_good()

    async def drained() -> bool:
        info = await intake.bus.js.consumer_info(AGENT.name, DURABLE)
        return bool(info.num_ack_pending == 0 and info.num_pending == 0)

    await eventually(drained, "the intake consumer acknowledged everything")


@pytest.mark.parametrize(
    "subject",
    [
        "epm.agent.:.0.ElevationRequested",
        "epm.agent.ACME.pc.ElevationRequested",
        "epm.agent._global.pc.x",
    ],
)
async def test_a_subject_with_invalid_ids_is_dead_lettered_not_retried(
    intake: Intake, subject: str
) -> None:
    """Found by the fuzzer: ids in the subject were used unvalidated to build the alert's
    subject, so the intake failed on the message and NATS redelivered it forever."""
    msg_id = str(uuid.uuid4())
    body = orjson.dumps(intake.envelope(intake.dev, msg_id))
    headers = {"Nats-Msg-Id": msg_id, SIGNATURE_HEADER: sign(intake.dev.key, subject, msg_id, body)}
    seq = await publish_stored(intake, (subject, body, headers), outside_window=False)
    assert seq is not None

    async def settled() -> str | None:
        await intake.ledger.refresh()
        return intake.ledger.outcome(seq, msg_id)

    assert await eventually(settled, "a dead letter") == "dlq:invalid_subject"
