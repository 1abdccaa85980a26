"""An event an observer or a reaction decoded as it was received is not decoded again by the
projection's writer (epm_service.projection.Received), nor one its own process appended
(epm_service.publisher.RecentlyAppended)."""

from __future__ import annotations

import pytest
from epm_events.catalog import Actor, Approved
from epm_events.codec import DecodeError, decode_event, encode
from epm_events.envelope import new_envelope, subject_of
from epm_service.projection import Received, StoredMsg
from epm_service.publisher import APPENDED, RecentlyAppended


def stored(seq: int, request_id: str = "req-1") -> StoredMsg:
    event = Approved(request_id=request_id, scope="tenant", by=Actor(kind="rule", id="r"))
    env = new_envelope(event, tenant="acme", source="/epm/test")
    return StoredMsg(seq, subject_of(env), encode(env), env.id, 0)


def test_the_writer_takes_what_was_decoded_on_receipt_once() -> None:
    received = Received()
    m = stored(7)
    env, event = received.get(m)
    assert received.get(m)[1] is event  # a second observer: the same objects
    taken_env, taken = received.take(m)
    assert taken is event and taken_env is env
    again_env, again = received.take(m)  # taken: decoded anew, equal
    assert again is not event and again == event and again_env.id == env.id


def test_a_message_nobody_decoded_is_decoded_by_the_writer() -> None:
    env, event = Received().take(stored(3, "req-9"))
    assert isinstance(event, Approved) and event.request_id == "req-9"
    assert env.tenant == "acme"


def test_an_undecodable_message_is_refused_each_time_and_never_kept() -> None:
    received = Received()
    broken = StoredMsg(5, "epm.evt.acme.request.req-1.Approved", b"{not json", None, 0)
    for _ in range(2):
        with pytest.raises(DecodeError):
            received.get(broken)
    with pytest.raises(DecodeError):
        received.take(broken)


def test_what_is_kept_stays_bounded() -> None:
    received = Received()
    received.LIMIT = 3
    for seq in range(1, 8):
        received.get(stored(seq))
    assert len(received._by_seq) <= 3


def test_an_event_this_process_appended_comes_back_without_being_decoded() -> None:
    event = Approved(request_id="req-2", scope="tenant", by=Actor(kind="rule", id="r"))
    env = new_envelope(event, tenant="acme", source="/epm/test")
    payload = encode(env)
    appended = RecentlyAppended()
    appended.remember(payload, env, event)
    hit = appended.get(env.id, payload)
    assert hit is not None and hit[0] is env and hit[1] is event  # the objects it encoded,
    assert decode_event(payload) == hit  # exactly what decoding the same bytes gives


def test_only_the_very_bytes_appended_match() -> None:
    event = Approved(request_id="req-2", scope="tenant", by=Actor(kind="rule", id="r"))
    env = new_envelope(event, tenant="acme", source="/epm/test")
    appended = RecentlyAppended()
    appended.remember(encode(env), env, event)
    other = new_envelope(
        Approved(request_id="req-2", scope="once", by=Actor(kind="rule", id="r")),
        tenant="acme",
        source="/epm/test",
        id=env.id,  # the same id, other bytes
    )
    assert appended.get(env.id, encode(other)) is None
    assert appended.get(None, encode(env)) is None
    assert appended.get("another-id", encode(env)) is None


def test_the_events_a_process_remembers_stay_bounded_oldest_first() -> None:
    appended = RecentlyAppended()
    appended.LIMIT = 3
    msgs = [stored(seq, f"req-{seq}") for seq in range(1, 8)]
    for m in msgs:
        env, event = decode_event(m.data)
        appended.remember(m.data, env, event)
    assert len(appended._by_id) <= 3
    assert appended.get(msgs[-1].msg_id, msgs[-1].data) is not None
    assert appended.get(msgs[0].msg_id, msgs[0].data) is None


def test_a_projection_takes_what_its_process_appended_instead_of_decoding() -> None:
    m = stored(4, "req-4")
    env, event = decode_event(m.data)
    APPENDED.remember(m.data, env, event)
    assert Received().take(m)[1] is event
    assert Received().get(m)[1] is event
