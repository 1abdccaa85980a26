"""gather_acks: a publish whose acknowledgement never comes fails in bounded time."""

from __future__ import annotations

import asyncio

import pytest
from epm_service.publisher import gather_acks
from nats.js.api import PubAck


async def test_acknowledgements_come_back_in_publish_order() -> None:
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in range(3)]
    for seq, fut in zip((3, 1, 2), reversed(futures), strict=True):
        fut.set_result(PubAck(stream="S", seq=seq))
    assert [a.seq for a in await gather_acks(futures)] == [2, 1, 3]


async def test_a_lost_acknowledgement_times_out_and_frees_the_unfinished_publishes() -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[PubAck] = loop.create_future()
    done.set_result(PubAck(stream="S", seq=1))
    lost: asyncio.Future[PubAck] = loop.create_future()  # its server was killed
    with pytest.raises(TimeoutError):
        await gather_acks([done, lost], timeout=0.05)
    assert lost.cancelled()
