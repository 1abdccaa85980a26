"""Hints one service gives another on core NATS (``epm_events.subjects.NOTICE_PREFIX``):
in no stream, never the truth; whoever waits for one also has a way on without it."""

from __future__ import annotations

from epm_events.catalog import Model


class Undecided(Model):
    """On ``UNDECIDED_NOTICE``, from approval-svc: no one-time grant and no rule decides
    this new request, so it waits for a technician."""

    request_id: str
