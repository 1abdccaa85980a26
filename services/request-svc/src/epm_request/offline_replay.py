"""Replaying a device's offline log: which uploaded records become domain events, which are
duplicates, and what is a security alert. Pure: no I/O, tested with nothing but Python.

Rules (docs/internal-contracts.md, "Offline log replay"):
- the batch is internally consistent: its records are in order, each one's hash is
  ``epm_domain.offline_log.record_hash(prev_hash, record)`` and links to the one before,
  and ``chain_head`` is the last one's hash; a record that fails is refused (log_tampered);
- per (device, sequence) the first accepted record wins: the same record again is a
  duplicate (silently skipped), another record is a fork (log_fork, refused);
- a new record whose predecessor is missing is accepted after a log_gap alert; one whose
  predecessor was accepted with another hash continues another branch (log_fork, accepted);
- an offline code seen before (same device + code reference, or the same code hash
  anywhere), or issued to another device, raises code_reuse; the record is still
  accepted: it is what happened on the device.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from epm_domain.offline_log import GENESIS, RECORD_EVENTS, record_hash
from epm_events.agent import OfflineLogBatch, OfflineLogEntry
from epm_events.catalog import OfflineCodeRedeemed, OfflineRecord
from pydantic import ValidationError

MAX_EVIDENCE_FIELDS = 12


@dataclass(frozen=True, slots=True)
class DeviceLog:
    """What the server has accepted of one device's log, around the batch's range."""

    last_seq: int = 0
    hashes: Mapping[int, str] = field(default_factory=dict)  # seq -> accepted record hash


@dataclass(frozen=True, slots=True)
class Alert:
    kind: str  # log_tampered, log_gap, log_fork, code_reuse
    reason: str
    evidence: dict[str, Any]
    key: str  # what makes this alert one alert: its id is derived from it

    @property
    def severity(self) -> str:
        return "high"


@dataclass(slots=True)
class Verdict:
    accepted: list[OfflineRecord] = field(default_factory=list)
    uploaded: list[dict[str, Any]] = field(default_factory=list)
    """The accepted records' data as the device signed it (with record_hash), in order."""
    duplicates: int = 0
    refused: int = 0
    alerts: list[Alert] = field(default_factory=list)
    refusals: list[tuple[int, str]] = field(default_factory=list)
    """(device_seq, alert kind) of each refused record whose sequence is known: the device
    is told which of its records were refused, and why (ReplayAck.refusals)."""

    def refuse(self, seq: Any, alert: Alert) -> None:
        self.refused += 1
        self.alerts.append(alert)
        if isinstance(seq, int):
            self.refusals.append((seq, alert.kind))


def code_refs(device_id: str, record: OfflineCodeRedeemed) -> list[str]:
    """What identifies a redeemed code: the device's own counter or response reference, and
    the code's hash (the same code on another device is a clone or a leak)."""
    refs = [f"{device_id}|{record.code_ref}"]
    if record.code_hash:
        refs.append(f"hash|{record.code_hash}")
    return refs


def redeemed_refs(device_id: str, batch: OfflineLogBatch) -> tuple[list[str], list[str]]:
    """The code refs and code hashes a batch redeems (what to look up before ``decide``)."""
    refs: list[str] = []
    hashes: list[str] = []
    for entry in batch.records:
        if entry.type != OfflineCodeRedeemed.NAME:
            continue
        code_ref, code_hash = entry.data.get("code_ref"), entry.data.get("code_hash")
        if isinstance(code_ref, str):
            refs.append(f"{device_id}|{code_ref}")
        if isinstance(code_hash, str):
            refs.append(f"hash|{code_hash}")
            hashes.append(code_hash)
    return refs, hashes


def decide(
    device_id: str,
    batch: OfflineLogBatch,
    log: DeviceLog,
    redemptions: Mapping[str, tuple[str, int]] | None = None,
    issued_to: Mapping[str, str] | None = None,
) -> Verdict:
    """What to do with each record of a verified (signed) batch from ``device_id``.

    ``redemptions``: ref -> (device, seq) of its first redemption (see ``code_refs``);
    ``issued_to``: code hash -> the device the server issued the code to."""
    out = Verdict()
    hashes = dict(log.hashes)
    last = log.last_seq
    seen_codes = dict(redemptions or {})
    issued = issued_to or {}
    entries = batch.records
    head_problem = _head_problem(batch)
    if head_problem is not None:
        out.refused = len(entries)
        out.alerts.append(
            Alert(
                "log_tampered",
                f"upload from device {device_id} is inconsistent: {head_problem}",
                {"first_seq": batch.first_seq, "last_seq": batch.last_seq},
                f"{device_id}:head:{batch.first_seq}:{batch.chain_head}",
            )
        )
        out.refusals = [
            (seq, "log_tampered")
            for seq in (e.data.get("device_seq") for e in entries)
            if isinstance(seq, int)
        ]
        return out
    prev: OfflineLogEntry | None = None
    prev_seq = 0
    refused_here: set[int] = set()  # already alerted: not a gap as well
    for entry in entries:
        record, problem, uploaded = _record_of(device_id, entry)
        if record is None or problem is not None:
            seq = record.device_seq if record is not None else entry.data.get("device_seq")
            out.refuse(seq, _tampered(device_id, entry, seq, problem or "invalid"))
            if isinstance(seq, int):
                refused_here.add(seq)
            continue
        seq = record.device_seq
        if prev is not None and seq <= prev_seq:
            out.refuse(seq, _tampered(device_id, entry, seq, "records out of order"))
            continue
        if prev is not None and seq == prev_seq + 1 and entry.prev_hash != prev.record_hash:
            out.refuse(
                seq, _tampered(device_id, entry, seq, "does not chain to the record before it")
            )
            refused_here.add(seq)
            prev, prev_seq = entry, seq
            continue
        prev, prev_seq = entry, seq
        accepted = hashes.get(seq)
        if accepted is not None:
            if accepted == entry.record_hash:
                out.duplicates += 1
            else:
                out.refuse(
                    seq,
                    Alert(
                        "log_fork",
                        f"device {device_id} uploaded another record {seq} than the one "
                        "accepted before (a restored or cloned disk, or an edited log)",
                        {
                            "device_seq": seq,
                            "accepted_hash": accepted,
                            "offered_hash": entry.record_hash,
                            "offered": _summary(entry),
                        },
                        f"{device_id}:fork:{seq}:{entry.record_hash}",
                    ),
                )
            continue
        before = hashes.get(seq - 1)
        if seq > last + 1 and before is None and seq - 1 not in refused_here:
            out.alerts.append(
                Alert(
                    "log_gap",
                    f"device {device_id} skipped records {last + 1}..{seq - 1} of its "
                    "offline log (deleted records, or an upload out of order)",
                    {"missing_from": last + 1, "missing_to": seq - 1, "next_seq": seq},
                    f"{device_id}:gap:{last + 1}:{seq - 1}",
                )
            )
        elif (before is not None and before != entry.prev_hash) or (
            seq == 1 and entry.prev_hash != GENESIS
        ):
            out.alerts.append(
                Alert(
                    "log_fork",
                    f"record {seq} of device {device_id} continues another log than the one "
                    "accepted (a restored or cloned disk)",
                    {
                        "device_seq": seq,
                        "accepted_prev_hash": before or GENESIS,
                        "offered_prev_hash": entry.prev_hash,
                    },
                    f"{device_id}:branch:{seq}:{entry.prev_hash}",
                )
            )
        hashes[seq] = entry.record_hash
        last = max(last, seq)
        out.accepted.append(record)
        out.uploaded.append(uploaded)
        if isinstance(record, OfflineCodeRedeemed):
            out.alerts.extend(_code_reuse(device_id, record, seen_codes, issued))
    return out


def _head_problem(batch: OfflineLogBatch) -> str | None:
    entries = batch.records
    if entries[-1].record_hash != batch.chain_head:
        return "the signed chain head is not the hash of its last record"
    first, last = entries[0].data.get("device_seq"), entries[-1].data.get("device_seq")
    if (first, last) != (batch.first_seq, batch.last_seq):
        return f"it claims records {batch.first_seq}..{batch.last_seq} but holds {first}..{last}"
    return None


def _record_of(
    device_id: str, entry: OfflineLogEntry
) -> tuple[OfflineRecord | None, str | None, dict[str, Any]]:
    """The record as its event, what is wrong with it (None: nothing), and its data as the
    device signed it plus ``record_hash`` (what is appended)."""
    uploaded = {**entry.data, "record_hash": entry.record_hash}
    cls = RECORD_EVENTS.get(entry.type)
    if cls is None:
        return None, f"{entry.type!r} is not an offline record type", uploaded
    try:
        # The model's validator itself: what model_validate calls, without its Python
        # wrapper (1 µs of 4 a record, on the event loop every storm batch passes through).
        record = cls.__pydantic_validator__.validate_python(uploaded)
    except ValidationError as exc:
        return None, f"not a valid {entry.type}: {str(exc).splitlines()[0]}", uploaded
    if record.device_id != device_id:
        return record, f"it names device {record.device_id!r}", uploaded
    if record_hash(entry.prev_hash, {"type": entry.type, "data": entry.data}) != entry.record_hash:
        return record, "its hash does not match its content (edited after it was written)", uploaded
    return record, None, uploaded


def _tampered(device_id: str, entry: OfflineLogEntry, seq: Any, problem: str) -> Alert:
    return Alert(
        "log_tampered",
        f"record {seq} from device {device_id} was refused: {problem}",
        {"device_seq": seq, "offered_hash": entry.record_hash, "offered": _summary(entry)},
        f"{device_id}:tampered:{seq}:{entry.record_hash}",
    )


def _code_reuse(
    device_id: str,
    record: OfflineCodeRedeemed,
    seen: dict[str, tuple[str, int]],
    issued: Mapping[str, str],
) -> list[Alert]:
    here = (device_id, record.device_seq)
    alerts: list[Alert] = []
    for ref in code_refs(device_id, record):
        first = seen.get(ref)
        if first is None:
            seen[ref] = here
            continue
        if first == here:
            continue
        where = "on this device" if first[0] == device_id else f"on device {first[0]}"
        alerts.append(
            Alert(
                "code_reuse",
                f"an offline code redeemed {where} (record {first[1]}) was redeemed again by "
                f"device {device_id} (record {record.device_seq})",
                {
                    "code_ref": record.code_ref,
                    "code_hash": record.code_hash,
                    "first": {"device_id": first[0], "device_seq": first[1]},
                    "again": {"device_id": device_id, "device_seq": record.device_seq},
                },
                f"{device_id}:reuse:{record.device_seq}:{ref}",
            )
        )
        break  # one alert per redemption, naming the first match
    owner = issued.get(record.code_hash or "")
    if owner is not None and owner != device_id:
        alerts.append(
            Alert(
                "code_reuse",
                f"device {device_id} redeemed an offline code issued to device {owner}",
                {
                    "code_ref": record.code_ref,
                    "code_hash": record.code_hash,
                    "issued_to": owner,
                    "again": {"device_id": device_id, "device_seq": record.device_seq},
                },
                f"{device_id}:foreign:{record.device_seq}:{record.code_hash}",
            )
        )
    return alerts


def _summary(entry: OfflineLogEntry) -> dict[str, Any]:
    """The offered record for the evidence: its type and top-level fields (bounded)."""
    data = {k: v for k, v in list(entry.data.items())[:MAX_EVIDENCE_FIELDS]}
    return {"type": entry.type, "data": data, "prev_hash": entry.prev_hash}
