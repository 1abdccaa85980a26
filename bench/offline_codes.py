"""Offline code cost: generation (approval-svc) and verification (the agent, offline).

Target: verification under 1 ms on the agent (issue 6). Pure CPU, no server:
the agent derives nothing at verification time (its two keys come unsealed from
its key material), so a verification is one or two HMAC-SHA256 and a
constant-time comparison. Rows give p50 and p99 of one operation, in ms.
"""

from __future__ import annotations

import secrets
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from epm_domain.offline_codes import (
    AccessCode,
    ResponseGrant,
    issue_access_code,
    response_code,
    verify_access_code,
    verify_response,
)
from epm_domain.sealed import (
    derive_device_keys,
    new_private_key,
    open_device_keys,
    seal_device_keys,
)

from bench.results import Row

TARGET_MS = "<1"
DEVICE = "d-0123456789abcdef"
SHA = "ab" * 32


def _cuts(op: Callable[[int], object], runs: int) -> tuple[float, float]:
    for i in range(min(runs, 500)):  # warm up
        op(i)
    samples = []
    clock = time.perf_counter_ns
    for i in range(runs):
        started = clock()
        op(i)
        samples.append((clock() - started) / 1e6)
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49], cuts[98]


def offline_codes(runs: int = 20_000) -> list[Row]:
    master = secrets.token_bytes(32)
    private, public = new_private_key()
    keys = derive_device_keys(master, "acme", DEVICE, 1)
    today = datetime.now(UTC).date()
    expires = today + timedelta(days=7)
    grant = ResponseGrant("app", sha256=SHA)
    responses = [response_code(keys.response, DEVICE, f"{i:06d}", grant, 1) for i in range(2048)]
    codes = [
        issue_access_code(keys.access_code, DEVICE, AccessCode(i, "app", expires), 1, today)
        for i in range(2048)
    ]
    material = seal_device_keys(keys, public)

    ops: dict[str, tuple[Callable[[int], object], str | None]] = {
        # server side: derive the device key (as approval-svc does per command), then issue
        "offline.response.issue": (
            lambda i: response_code(
                derive_device_keys(master, "acme", DEVICE, 1).response,
                DEVICE,
                f"{i % 1_000_000:06d}",
                grant,
                1,
            ),
            TARGET_MS,
        ),
        "offline.code.issue": (
            lambda i: issue_access_code(
                derive_device_keys(master, "acme", DEVICE, 1).access_code,
                DEVICE,
                AccessCode(i % 2048, "app", expires),
                1,
                today,
            ),
            TARGET_MS,
        ),
        # agent side, offline
        "offline.response.verify": (
            lambda i: verify_response(
                keys.response, DEVICE, f"{i % 2048:06d}", grant, 1, responses[i % 2048]
            ),
            TARGET_MS,
        ),
        "offline.code.verify": (
            lambda i: verify_access_code(keys.access_code, DEVICE, codes[i % 2048], 1, today),
            TARGET_MS,
        ),
        # once per enrollment or rotation: not on the hot path, no target
        "offline.key_material.open": (
            lambda i: open_device_keys(material, private, "acme", DEVICE),
            None,
        ),
    }
    rows = []
    for name, (op, target) in ops.items():
        n = runs if target else max(runs // 20, 100)
        p50, p99 = _cuts(op, n)
        rows.append(Row(f"{name}.p50", round(p50, 4), "ms", target=target))
        rows.append(Row(f"{name}.p99", round(p99, 4), "ms", target=target))
    return rows


if __name__ == "__main__":
    for row in offline_codes():
        print(f"{row.name}: {row.value} {row.unit} (target {row.target})")
