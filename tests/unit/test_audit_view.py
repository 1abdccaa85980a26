"""Audit records as people see them, export lines, checkpoints and trail verification: no I/O."""

from __future__ import annotations

import base64

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from epm_audit.chain import EMPTY_HEAD, AuditRecord, ChainHead, seal
from epm_audit.checkpoint import (
    CheckpointPolicy,
    parse_public_keys,
    public_bytes,
    sign_heads,
    signature_problem,
)
from epm_audit.verify import verify_lines
from epm_audit.view import LineError, facts_of, line_of, record_of_line

KEY = Ed25519PrivateKey.generate()
KEYS = {"audit-1": public_bytes(KEY)}


def event(data: dict[str, object], source: str = "/epm/approval-svc") -> dict[str, object]:
    return {"id": "e1", "source": source, "type": "epm.X.v1", "data": data}


@pytest.mark.parametrize(
    ("subject", "data", "source", "actor"),
    [
        (
            "epm.evt.acme.request.r1.Approved",
            {"request_id": "r1", "by": {"kind": "rule", "id": "rule-7"}},
            "/epm/approval-svc",
            ("rule", "rule-7"),
        ),
        (
            "epm.evt._global.token.t1.TokenIssued",
            {"token_id": "t1", "issued_by": "msp_admin:ann"},
            "/epm/gateway",
            ("technician", "msp_admin:ann"),
        ),
        (
            "epm.evt.acme.devicekey.d1.OfflineCodeIssued",
            {"device_id": "d1", "issued_by": "device:d1"},
            "/epm/approval-svc",
            ("agent", "/agents/acme/d1"),
        ),
        (
            "epm.evt.acme.device.d1.AdminSessionStarted",
            {"device_id": "d1", "device_time": "2025-03-01T09:00:00Z", "user": "bob"},
            "/epm/request-svc",
            ("agent", "/agents/acme/d1"),
        ),
        (
            "epm.evt.acme.request.r1.RequestExpired",
            {"request_id": "r1"},
            "/epm/request-svc",
            ("system", "request-svc"),
        ),
    ],
)
def test_actor_is_derived_from_the_event(
    subject: str, data: dict[str, object], source: str, actor: tuple[str, str]
) -> None:
    facts = facts_of("acme", subject, event(data, source))
    assert (facts.actor.kind, facts.actor.id) == actor


def test_device_request_user_and_device_time_come_from_data_or_subject() -> None:
    offline = facts_of(
        "acme",
        "epm.evt.acme.device.d1.ElevationPerformed",
        event({"device_id": "d1", "user": "bob", "device_time": "2025-03-01T09:00:00Z"}),
    )
    assert (offline.device, offline.user, offline.device_time) == (
        "d1",
        "bob",
        "2025-03-01T09:00:00Z",
    )
    expired = facts_of("acme", "epm.evt.acme.request.r9.RequestExpired", event({}))
    assert (expired.request, expired.device, expired.device_time) == ("r9", None, None)


def records(tenant: str, count: int, first_seq: int = 1) -> list[AuditRecord]:
    head, out = EMPTY_HEAD, []
    for i in range(count):
        body = orjson.dumps(event({"request_id": f"r{i}", "user": "bob"}) | {"id": f"{tenant}{i}"})
        r = seal(
            head,
            seq=first_seq + i,
            event_id=f"{tenant}{i}",
            tenant=tenant,
            type="RequestCreated",
            subject=f"epm.evt.{tenant}.request.r{i}.RequestCreated",
            received_ns=1_741_000_000_123_456_789 + i,
            event=body,
        )
        out.append(r)
        head = ChainHead(r.chain_seq, r.hash)
    return out


def test_export_line_gives_back_its_record_and_shows_the_event_as_json() -> None:
    [r] = records("acme", 1)
    line = line_of(r)
    assert record_of_line(line) == r
    shown = orjson.loads(line)
    assert shown["event"]["data"]["user"] == "bob"
    assert shown["received_at"] == "2025-03-03T11:06:40.123456789Z"


def test_an_event_that_is_not_one_line_of_json_travels_as_base64() -> None:
    multiline = seal(
        EMPTY_HEAD,
        seq=1,
        event_id="x",
        tenant="acme",
        type="X",
        subject="epm.evt.acme.x.1.X",
        received_ns=1,
        event=b'{\n"id": "x"}',
    )
    line = line_of(multiline)
    assert base64.b64decode(orjson.loads(line)["event_base64"]) == b'{\n"id": "x"}'
    assert record_of_line(line) == multiline


def test_a_line_with_any_byte_changed_is_refused() -> None:
    [r] = records("acme", 1)
    line = line_of(r)
    with pytest.raises(LineError):
        record_of_line(line.replace(b'"actor":{"kind":"system"', b'"actor":{"kind":"agent"'))
    with pytest.raises(LineError):
        record_of_line(line.replace(b'"tenant":"acme",', b'"tenant": "acme",'))


def test_checkpoint_policy_never_counts_the_checkpoint_itself() -> None:
    policy = CheckpointPolicy(every_records=3, every_seconds=60)
    assert not policy.due(2, 0, 0)
    assert policy.due(3, 0, 0)
    assert not policy.due(4, 3, 3600)  # only the checkpoint record since: not due, ever
    assert not policy.due(3, 3, 3600)  # the checkpoint is not even in yet
    assert policy.due(5, 3, 3600)  # one new record, and the interval passed
    assert not policy.due(5, 3, 10)
    assert policy.due(7, 3, 0)  # three new records


def test_checkpoint_signature_verifies_with_its_key_only() -> None:
    heads = {"acme": ChainHead(3, "ab" * 32)}
    signature = sign_heads(KEY, heads)
    assert signature_problem(KEYS, "audit-1", heads, signature) is None
    other = {"audit-1": public_bytes(Ed25519PrivateKey.generate())}
    assert "does not verify" in str(signature_problem(other, "audit-1", heads, signature))
    moved = {"acme": ChainHead(4, "ab" * 32)}
    assert signature_problem(KEYS, "audit-1", moved, signature) is not None
    assert "not among" in str(signature_problem({}, "audit-1", heads, signature))


def checkpoint_record(head: ChainHead, prev: AuditRecord, key: Ed25519PrivateKey) -> AuditRecord:
    heads = {"acme": head}
    data = {
        "checkpoint_id": "c1",
        "heads": {"acme": {"records": head.records, "hash": head.hash}},
        "key_id": "audit-1",
        "signature": sign_heads(key, heads),
    }
    return seal(
        ChainHead(prev.chain_seq, prev.hash),
        seq=prev.seq + 1,
        event_id="c1",
        tenant="acme",
        type="AuditCheckpointSigned",
        subject="epm.evt.acme.audit.c1.AuditCheckpointSigned",
        received_ns=prev.received_ns + 1,
        event=orjson.dumps(event(data, "/epm/audit-svc")),
    )


def test_an_export_with_a_signed_checkpoint_verifies_and_names_a_forged_one() -> None:
    chain = records("acme", 3)
    good = checkpoint_record(ChainHead(2, chain[1].hash), chain[2], KEY)
    lines = [line_of(r) for r in [*chain, good]]
    verdict = verify_lines(lines, KEYS)
    assert (verdict.ok, verdict.checkpoints, verdict.signed_records) == (True, 1, 2)
    assert verdict.head == good.hash

    forged = checkpoint_record(ChainHead(2, chain[1].hash), chain[2], Ed25519PrivateKey.generate())
    verdict = verify_lines([line_of(r) for r in [*chain, forged]], KEYS)
    assert (verdict.ok, verdict.first_bad, verdict.line) == (False, forged.seq, 4)

    wrong_head = checkpoint_record(ChainHead(2, chain[0].hash), chain[2], KEY)
    verdict = verify_lines([line_of(r) for r in [*chain, wrong_head]], KEYS)
    assert (verdict.ok, verdict.first_bad) == (False, wrong_head.seq)


def test_interleaved_chains_verify_and_a_gap_is_named() -> None:
    a, b = records("acme", 2, first_seq=1), records("globex", 2, first_seq=3)
    lines = [line_of(r) for r in [a[0], a[1], b[0], b[1]]]
    verdict = verify_lines(lines, {})
    assert verdict.ok and set(verdict.heads) == {"acme", "globex"}
    verdict = verify_lines([lines[0], lines[1], lines[3]], {})
    assert (verdict.ok, verdict.first_bad, verdict.tenant) == (False, b[1].seq, "globex")


def test_published_key_list_is_parsed_and_junk_refused() -> None:
    served = {
        "items": [{"key_id": "audit-1", "public_key": base64.b64encode(KEYS["audit-1"]).decode()}]
    }
    assert parse_public_keys(orjson.loads(orjson.dumps(served))) == KEYS
    with pytest.raises(ValueError, match="public key"):
        parse_public_keys({"items": [{"key_id": "x", "public_key": "AAAA"}]})
