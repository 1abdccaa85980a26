"""An event an observer or a reaction decoded as it was received is not decoded again by the
projection's writer (epm_service.projection.Received)."""

from __future__ import annotations

import pytest
from epm_events.catalog import Actor, Approved
from epm_events.codec import DecodeError, encode
from epm_events.envelope import new_envelope, subject_of
from epm_service.projection import Received, StoredMsg


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
