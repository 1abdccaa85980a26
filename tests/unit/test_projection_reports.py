"""What a projection's process tells its service after a commit (projection_process._Reports):
a watched event or a change of caught_up at once, a position alone at most every
REPORT_SECONDS, and the last one always within that time."""

from __future__ import annotations

import asyncio
import pickle
from typing import Any, cast

import pytest
from epm_service.projection import Projector
from epm_service.projection_process import REPORT_SECONDS, _Reports

pytestmark = pytest.mark.unit


class Frames:
    """Collects what write_frame writes (the pipe to the service, in memory)."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []

    def write(self, data: bytes) -> None:
        self.sent.append(pickle.loads(data[4:]))


class Position:
    def __init__(self) -> None:
        self.position = 0
        self.caught_up = False
        self.last_seq_of: dict[str, int] = {}


def reports() -> tuple[_Reports, Frames, Position]:
    frames, projector = Frames(), Position()
    return _Reports(cast(Any, frames), cast(Projector, projector)), frames, projector


async def test_a_commit_that_only_moves_the_position_is_told_at_most_every_interval() -> None:
    r, frames, p = reports()
    p.position = 1
    r.committed()
    assert [f[3] for f in frames.sent] == [1]
    for seq in range(2, 50):
        p.position = seq
        r.committed()
    assert len(frames.sent) == 1, "positions within the interval wait"
    await asyncio.sleep(REPORT_SECONDS * 2)
    assert [f[3] for f in frames.sent] == [1, 49], "the last position is told within the interval"
    r.cancel()


async def test_a_watched_event_and_caught_up_are_told_at_once() -> None:
    r, frames, p = reports()
    p.position = 1
    r.committed()
    p.position, p.last_seq_of = 2, {"DeviceRevoked": 2}
    r.committed()
    assert frames.sent[-1][3:] == (2, False, {"DeviceRevoked": 2})
    p.position, p.caught_up = 3, True
    r.committed()
    assert frames.sent[-1][3:] == (3, True, {}), "only what changed since the last report"
    assert len(frames.sent) == 3
    r.cancel()


async def test_an_answer_to_the_service_carries_the_position_and_ends_a_pending_report() -> None:
    r, frames, p = reports()
    r.committed()
    p.position = 7
    r.committed()  # waits for the interval
    r.send("done", 5, True)
    await asyncio.sleep(REPORT_SECONDS * 2)
    assert frames.sent[-1][:4] == ("done", 5, True, 7)
    assert len(frames.sent) == 2, "the pending report was told by the answer"
