"""Prometheus metrics shared by every process (one registry per process)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_APPLIED = Counter(
    "epm_projection_events_applied_total", "Events applied by a projection", ["projection"]
)
EVENTS_SKIPPED = Counter(
    "epm_projection_events_skipped_total",
    "Events a projection saw again (duplicate id) and skipped",
    ["projection"],
)
PROJECTION_POSITION = Gauge(
    "epm_projection_position", "Last stream sequence committed", ["projection"]
)
DEAD_LETTERS = Counter("epm_dead_letters_total", "Messages dead-lettered", ["service", "reason"])
RPC_SECONDS = Histogram(
    "epm_rpc_seconds", "Command handling time", ["service", "command", "outcome"]
)
