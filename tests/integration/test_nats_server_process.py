"""The nats-server EPM starts beside its services (tests, bench, ``epm dev``) yields to them."""

from __future__ import annotations

import os

import pytest
from epm_service.natsserver import NatsServer

pytestmark = pytest.mark.integration


def test_every_thread_of_the_nats_server_runs_as_sched_batch(nats_server: NatsServer) -> None:
    assert nats_server.proc is not None
    pid = nats_server.proc.pid
    threads = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    assert len(threads) > 1  # the Go runtime's threads, started after the policy was set
    assert {os.sched_getscheduler(t) for t in threads} == {os.SCHED_BATCH}
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the test process itself: untouched
