"""Rule evaluation with 100,000 rules: p50/p99 of one ``RuleIndex.evaluate`` (target p99 < 50 µs).

The rule set looks like an MSP's: 1,000 tenants with SHA-256 allows, publisher
and app-name rules, some file-name and path wildcards, and global rules of
every kind. Requests mix hits and misses, so both the buckets a request names
and the wildcard lists are walked. Pure CPU: no server needed.
"""

from __future__ import annotations

import random
import statistics
import time

from epm_approval.rules import Rule, RuleIndex
from epm_events.catalog import AppInfo, RuleMatch
from epm_events.ids import GLOBAL_TENANT

from bench.results import Row

TENANTS = 1_000
TARGET_US = "<50"


def _sha(rng: random.Random) -> str:
    return f"{rng.getrandbits(256):064x}"


def build_rules(count: int, rng: random.Random) -> tuple[list[Rule], list[str]]:
    """``count`` rules; returns them and the SHA-256 values they name (for hits)."""
    rules: list[Rule] = []
    shas: list[str] = []
    for i in range(count):
        tenant = GLOBAL_TENANT if i % 50 == 0 else f"t{i % TENANTS}"
        effect = "deny" if i % 7 == 0 else "allow"
        kind = i % 20
        if kind < 14:
            sha = _sha(rng)
            shas.append(sha)
            match = RuleMatch(sha256=sha)
        elif kind < 17:
            match = RuleMatch(publisher=f"Vendor {i % 5000}", app_name=f"App {i % 3000}")
        elif kind < 19:
            match = RuleMatch(file_name=f"tool{i % 4000}.exe", publisher="Vendor*")
        elif i % 100 == 19:  # wildcards only: filed under a literal prefix or suffix
            match = RuleMatch(path=rf"C:\Program Files\Vendor {(i // 100) % 100}\*")
        elif i % 100 == 39:
            match = RuleMatch(file_name=f"*-{(i // 100) % 500}.exe")
        elif i % 1000 == 59:  # no literal part: walked by each request of its tenant (t59)
            match = RuleMatch(app_name=f"*{(i // 1000) % 100}*")
        else:
            match = RuleMatch(app_name=f"Suite {i % 2000}", path=r"C:\Program Files\*")
        rules.append(Rule(id=f"r{i}", name=f"rule {i}", tenant=tenant, effect=effect, match=match))
    return rules, shas


def build_requests(count: int, shas: list[str], rng: random.Random) -> list[tuple[str, AppInfo]]:
    out = []
    for _ in range(count):
        n = rng.randrange(10_000)
        out.append(
            (
                f"t{rng.randrange(TENANTS)}",
                AppInfo(
                    file_name=f"tool{n % 4000}.exe",
                    sha256=rng.choice(shas) if n % 3 == 0 else _sha(rng),
                    publisher=f"Vendor {n % 5000}",
                    app_name=f"App {n % 3000}",
                    path=rf"C:\Program Files\Vendor {n % 100}\tool{n}.exe",
                ),
            )
        )
    return out


def rules_eval(rules: int = 100_000, requests: int = 20_000, seed: int = 7) -> list[Row]:
    """p50 and p99 of one evaluation, in microseconds, against ``rules`` rules."""
    rng = random.Random(seed)
    all_rules, shas = build_rules(rules, rng)
    index = RuleIndex()
    for rule in all_rules:
        index.add(rule)
    probes = build_requests(requests, shas, rng)
    for tenant, app in probes[:1000]:  # warm caches and the allocator
        index.evaluate(tenant, app)
    samples: list[float] = []
    clock = time.perf_counter_ns
    for tenant, app in probes:
        started = clock()
        index.evaluate(tenant, app)
        samples.append((clock() - started) / 1000)
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    label = f"rules.evaluate.{rules // 1000}k"
    return [
        Row(f"{label}.p50", round(cuts[49], 1), "us", target=TARGET_US),
        Row(f"{label}.p99", round(cuts[98], 1), "us", target=TARGET_US),
    ]


if __name__ == "__main__":
    for row in rules_eval():
        print(f"{row.name}: {row.value} {row.unit} (target {row.target})")
