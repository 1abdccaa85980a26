"""The audit hash chain: canonical records, sealing and end-to-end verification, no I/O."""

from __future__ import annotations

import dataclasses
import hashlib

import rfc8785
from epm_audit.chain import (
    EMPTY_HEAD,
    GENESIS,
    AuditRecord,
    ChainHead,
    canonical_record,
    chain_hash,
    link,
    seal,
    verify_chain,
)
from hypothesis import given
from hypothesis import strategies as st


def chain(tenant: str, count: int, first_seq: int = 1) -> list[AuditRecord]:
    head = EMPTY_HEAD
    out = []
    for i in range(count):
        r = seal(
            head,
            seq=first_seq + 2 * i,
            event_id=f"evt-{tenant}-{i}",
            tenant=tenant,
            type="RequestCreated",
            subject=f"epm.evt.{tenant}.request.req-{i}.RequestCreated",
            received_ns=1_741_000_000_123_456_789 + i,
            event=b'{"id":"evt-%d","data":{}}' % i,
        )
        out.append(r)
        head = ChainHead(r.chain_seq, r.hash)
    return out


@given(
    seq=st.integers(1, 2**53 - 1),
    chain_seq=st.integers(1, 2**53 - 1),
    received_ns=st.integers(0, 2**64),
    text=st.one_of(st.text(), st.from_regex(r"[a-z0-9_-]{1,40}", fullmatch=True)),
)
def test_canonical_record_is_rfc8785(seq: int, chain_seq: int, received_ns: int, text: str) -> None:
    fields = dict(
        seq=seq,
        event_id=text,
        tenant=text[:5],
        type=text[::-1],
        subject=f"epm.evt.{text}",
        received_ns=received_ns,
        chain_seq=chain_seq,
        event_sha256=hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest(),
    )
    reference = rfc8785.dumps({**fields, "received_ns": str(received_ns)})
    assert canonical_record(**fields) == reference  # type: ignore[arg-type]


@given(
    text=st.one_of(
        st.text(),
        st.from_regex(r"[a-z0-9_.-]{1,40}", fullmatch=True),
        st.sampled_from(['a"b', "a\\b", "a\x7fb", "a\xa0b", "a\u2028b", "tab\there", "é"]),
    ),
    received_ns=st.integers(0, 2**63 - 1),
)
def test_chain_hash_is_link_of_the_canonical_record(text: str, received_ns: int) -> None:
    """The ingest's one-step hash (plain text the short way, anything to escape the long
    way) is the chain's definition: link(prev_hash, canonical_record(...))."""
    event = text.encode("utf-8", "surrogatepass")
    fields = dict(
        seq=7,
        event_id=text,
        tenant=text[:5],
        type=text[::-1],
        subject=f"epm.evt.{text}",
        received_ns=received_ns,
        chain_seq=3,
    )
    canonical = canonical_record(**fields, event_sha256=hashlib.sha256(event).hexdigest())  # type: ignore[arg-type]
    expected = link(GENESIS, canonical)
    assert (
        chain_hash(
            GENESIS,
            7,
            text,
            text[:5],
            text[::-1],
            f"epm.evt.{text}",
            received_ns,
            3,
            event,
        )
        == expected
    )


def test_record_hash_is_sha256_of_prev_hash_and_canonical_record() -> None:
    [r] = chain("acme", 1)
    canonical = canonical_record(
        seq=r.seq,
        event_id=r.event_id,
        tenant=r.tenant,
        type=r.type,
        subject=r.subject,
        received_ns=r.received_ns,
        chain_seq=1,
        event_sha256=hashlib.sha256(r.event).hexdigest(),
    )
    assert r.prev_hash == GENESIS
    assert r.hash == hashlib.sha256(GENESIS.encode() + canonical).hexdigest()


def test_intact_chain_verifies_with_its_head() -> None:
    records = chain("acme", 5)
    verdict = verify_chain(records)
    assert verdict.ok
    assert (verdict.records, verdict.head) == (5, records[-1].hash)


def test_empty_chain_verifies() -> None:
    assert verify_chain([]).ok


def test_edited_event_breaks_the_chain_at_that_record() -> None:
    records = chain("acme", 5)
    records[2] = dataclasses.replace(records[2], event=b'{"id":"evt-2","data":{"x":1}}')
    verdict = verify_chain(records)
    assert not verdict.ok
    assert verdict.first_bad == records[2].seq
    assert verdict.records == 2


def test_edited_time_received_breaks_the_chain() -> None:
    records = chain("acme", 3)
    records[1] = dataclasses.replace(records[1], received_ns=records[1].received_ns + 1)
    assert verify_chain(records).first_bad == records[1].seq


def test_removed_record_is_found() -> None:
    records = chain("acme", 4)
    del records[1]
    verdict = verify_chain(records)
    assert not verdict.ok and verdict.first_bad == records[1].seq
    assert "position" in verdict.problem


def test_rehashed_forgery_still_breaks_the_link_to_the_next_record() -> None:
    records = chain("acme", 3)
    forged = seal(
        ChainHead(1, records[0].hash),
        seq=records[1].seq,
        event_id=records[1].event_id,
        tenant="acme",
        type="Approved",
        subject=records[1].subject,
        received_ns=records[1].received_ns,
        event=b"{}",
    )
    records[1] = forged
    verdict = verify_chain(records)
    assert not verdict.ok and verdict.first_bad == records[2].seq


def test_record_of_another_tenant_is_refused() -> None:
    records = chain("acme", 2) + chain("globex", 1, first_seq=100)
    verdict = verify_chain(records)
    assert not verdict.ok and verdict.first_bad == 100
