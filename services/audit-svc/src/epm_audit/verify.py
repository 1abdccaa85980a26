"""Verifying a trail end to end: every chain and every signed checkpoint, in one pass, no I/O.

The same code checks the server's database (``GET /v1/audit/verify``) and an
export file offline (``epm audit verify --file``): records arrive in stream
order, chains of several tenants interleaved. Each record must continue its
chain (``epm_audit.chain``); each checkpoint record must carry a signature
that verifies with one of the public keys given, over heads that are really
in the chain (the record at that position has that hash). The first record
that fails is named, by stream sequence, and verification stops there.

Memory: 32 bytes per record (each chain's hashes, to look up what a later
checkpoint claims), so a million records take about 32 MB.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from epm_audit.chain import EMPTY_HEAD, AuditRecord, ChainHead, record_hash
from epm_audit.checkpoint import CHECKPOINT, heads_document, signature_problem
from epm_audit.view import LineError, parse_event, record_of_line


@dataclass(frozen=True, slots=True)
class TrailVerdict:
    ok: bool
    records: int
    head: str
    """The chain's head hash when one chain was checked; else SHA-256 of the heads' RFC 8785
    JSON (``epm_audit.checkpoint.heads_document``): one fingerprint of the whole trail."""
    heads: dict[str, ChainHead]
    checkpoints: int
    """Checkpoint signatures verified."""
    signed_records: int
    """Records covered by a verified checkpoint (the rest is after the last one)."""
    first_bad: int | None = None
    """Stream sequence of the first record that does not verify."""
    tenant: str | None = None
    problem: str = ""
    line: int | None = None
    """Line number of the first bad record, when verifying a file."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ok": self.ok,
            "records": self.records,
            "head": self.head,
            "chains": {
                t: {"records": h.records, "head": h.hash} for t, h in sorted(self.heads.items())
            },
            "checkpoints": self.checkpoints,
            "signed_records": self.signed_records,
        }
        if not self.ok:
            out["first_bad"] = self.first_bad
            out["tenant"] = self.tenant
            out["problem"] = self.problem
            if self.line is not None:
                out["line"] = self.line
        return out


@dataclass(slots=True)
class _Chain:
    head: ChainHead = EMPTY_HEAD
    last_seq: int = 0
    signed: int = 0
    hashes: bytearray = field(default_factory=bytearray)

    def hash_at(self, chain_seq: int) -> str | None:
        if not 1 <= chain_seq <= self.head.records:
            return None
        return self.hashes[32 * (chain_seq - 1) : 32 * chain_seq].hex()


class TrailVerifier:
    """Feed records with ``add`` (False once one fails), then read ``verdict()``.

    ``public_keys`` ({key_id: raw Ed25519 public key}) check the checkpoints; a
    checkpoint signed with a key not given fails.
    """

    def __init__(self, public_keys: Mapping[str, bytes]) -> None:
        self.public_keys = dict(public_keys)
        self._chains: dict[str, _Chain] = {}
        self._last_seq = 0
        self._checkpoints = 0
        self._bad: tuple[int | None, str | None, str, int | None] | None = None

    @property
    def broken(self) -> bool:
        return self._bad is not None

    def fail(self, seq: int | None, tenant: str | None, problem: str, line: int | None) -> None:
        """Record a failure found outside ``add`` (a line that is not a record)."""
        if self._bad is None:
            self._bad = (seq, tenant, problem, line)

    def add(self, r: AuditRecord, line: int | None = None) -> bool:
        if self._bad is not None:
            return False
        problem = self._problem(r)
        if problem:
            self.fail(r.seq, r.tenant, problem, line)
            return False
        chain = self._chains[r.tenant]
        chain.head = ChainHead(r.chain_seq, r.hash)
        chain.last_seq = r.seq
        chain.hashes += bytes.fromhex(r.hash)
        self._last_seq = r.seq
        return True

    def _problem(self, r: AuditRecord) -> str:
        if r.seq <= self._last_seq:
            return f"stream sequence {r.seq} does not follow {self._last_seq}"
        chain = self._chains.setdefault(r.tenant, _Chain())
        if r.chain_seq != chain.head.records + 1:
            return f"chain position {r.chain_seq} where {chain.head.records + 1} was expected"
        if r.prev_hash != chain.head.hash:
            return "prev_hash is not the hash of the previous record of the chain"
        if record_hash(r) != r.hash:
            return "hash does not match the record's content"
        if r.type == CHECKPOINT:
            return self._checkpoint_problem(r)
        return ""

    def _checkpoint_problem(self, r: AuditRecord) -> str:
        event = parse_event(r.event)
        data = event.get("data") if event is not None else None
        try:
            assert isinstance(data, dict)
            key_id, signature = str(data["key_id"]), str(data["signature"])
            heads = {
                str(t): ChainHead(int(h["records"]), str(h["hash"]))
                for t, h in data["heads"].items()
            }
        except (AssertionError, KeyError, TypeError, ValueError, AttributeError):
            return "checkpoint without heads, key_id and signature"
        problem = signature_problem(self.public_keys, key_id, heads, signature)
        if problem:
            return f"checkpoint: {problem}"
        for tenant, head in heads.items():
            chain = self._chains.get(tenant)
            if chain is None:
                continue  # a chain this export does not hold: nothing to compare with
            if chain.hash_at(head.records) != head.hash:
                return (
                    f"checkpoint signs record {head.records} of chain {tenant!r} with a hash "
                    "that record does not have"
                )
            chain.signed = max(chain.signed, head.records)
        self._checkpoints += 1
        return ""

    def verdict(self) -> TrailVerdict:
        heads = {t: c.head for t, c in self._chains.items() if c.head.records}
        if len(heads) == 1:
            head = next(iter(heads.values())).hash
        else:
            head = hashlib.sha256(heads_document(heads)).hexdigest()
        records = sum(h.records for h in heads.values())
        signed = sum(c.signed for c in self._chains.values())
        if self._bad is None:
            return TrailVerdict(True, records, head, heads, self._checkpoints, signed)
        seq, tenant, problem, line = self._bad
        return TrailVerdict(
            False, records, head, heads, self._checkpoints, signed, seq, tenant, problem, line
        )


def verify_lines(lines: Iterable[bytes], public_keys: Mapping[str, bytes]) -> TrailVerdict:
    """Verify an export (NDJSON, ``epm_audit.view``), line by line, without trusting its
    writer: each line must be exactly what its chained fields give, each chain intact, each
    checkpoint signed by one of ``public_keys``."""
    verifier = TrailVerifier(public_keys)
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = record_of_line(line)
        except LineError as exc:
            verifier.fail(_seq_of(line), None, f"line {number}: {exc}", number)
            break
        if not verifier.add(record, number):
            break
    return verifier.verdict()


def _seq_of(line: bytes) -> int | None:
    """The ``seq`` a damaged line claims, if it still says one."""
    found = re.match(rb'\{"seq":(\d+),', line)
    return int(found.group(1)) if found else None
