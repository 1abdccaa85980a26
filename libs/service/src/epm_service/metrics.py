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
LOOP_LAG_SECONDS = Histogram(
    "epm_event_loop_lag_seconds",
    "How late the event loop ran a timer: time it spent on one thing without yielding",
    ["service"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
NATS_ACCOUNT_JWT_BYTES = Gauge(
    "epm_nats_account_jwt_bytes",
    "Size of the EPM account JWT last pushed to the resolver (every revoked NATS user adds"
    " about 100 bytes; it must stay under the servers' max_payload)",
)
NATS_REVOKED_USERS = Gauge(
    "epm_nats_revoked_users", "Device and integrator NATS users the account JWT revokes"
)
