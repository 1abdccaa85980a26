"""Benchmark rows, the results file and the table printed for people.

A row's ``ceiling`` is the raw-client figure of the same run it is compared
with (``ceiling_name`` says which). The ceiling rows themselves (``ceiling.*``)
have ``ceiling``, ``ratio`` and ``target`` null: they are the yardstick, not a
result to judge. ``target`` applies to ``ratio`` when there is a ceiling and
to ``value`` otherwise (API.md, "Benchmarks").
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    value: float
    unit: str
    ceiling: float | None = None
    ceiling_name: str | None = None
    ratio: float | None = None
    target: str | None = None


def compared(name: str, value: float, unit: str, ceiling: Row, target: str | None = None) -> Row:
    return Row(
        name=name,
        value=round(value, 1),
        unit=unit,
        ceiling=ceiling.value,
        ceiling_name=ceiling.name,
        ratio=round(value / ceiling.value, 3) if ceiling.value else None,
        target=target,
    )


def meets(row: Row) -> bool | None:
    """Whether a row reaches its target; None when it has none."""
    if row.target is None:
        return None
    # API.md: ">=0.5" judges the ratio to the ceiling, "<10" the value in the row's unit
    # (a latency row may show its ceiling for reference and still be judged on its value).
    upper_bound = row.target.startswith("<")
    subject = row.ratio if row.ceiling is not None and not upper_bound else row.value
    if subject is None:
        return False
    for op in (">=", "<=", ">", "<"):
        if row.target.startswith(op):
            bound = float(row.target[len(op) :])
            return {
                ">=": subject >= bound,
                "<=": subject <= bound,
                ">": subject > bound,
                "<": subject < bound,
            }[op]
    raise ValueError(f"unknown target {row.target!r}: use >=, <=, > or < and a number")


def write(rows: list[Row], path: Path) -> None:
    path.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")


def table(rows: list[Row]) -> str:
    header = ("name", "value", "unit", "ceiling", "ceiling_name", "ratio", "target", "")
    lines = [header]
    for r in rows:
        ok = meets(r)
        lines.append(
            (
                r.name,
                _figure(r.value),
                r.unit,
                "" if r.ceiling is None else _figure(r.ceiling),
                r.ceiling_name or "",
                "" if r.ratio is None else f"{r.ratio:.3f}",
                r.target or "",
                "" if ok is None else ("ok" if ok else "BELOW TARGET"),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _figure(value: float) -> str:
    """Large figures with thousands separators, small ones with three significant digits."""
    return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}"
