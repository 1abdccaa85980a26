"""An old event still in the stream is read in its current shape."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson
from epm_events.streams import EVENTS
from epm_events.subjects import event_subject
from epm_service.bus import Bus
from epm_service.projection import Projector
from epm_service.publisher import MSG_ID
from epm_service.tenants import TenantDirectory


async def test_tenant_created_v1_in_the_stream_is_projected_as_v2(bus: Bus, tmp_path: Path) -> None:
    v1 = {
        "specversion": "1.0",
        "id": "legacy-1",
        "source": "/epm/gateway",
        "type": "epm.TenantCreated.v1",
        "subject": "oldco",
        "time": datetime(2024, 6, 1, tzinfo=UTC).isoformat(),
        "tenant": "oldco",
        "data": {"tenant_id": "oldco", "display_name": "Old Co"},
    }
    ack = await bus.js.publish(
        event_subject("oldco", "tenant", "oldco", "TenantCreated"),
        orjson.dumps(v1),
        headers={MSG_ID: "legacy-1"},
        stream=EVENTS.name,
    )
    p = Projector(bus.js, TenantDirectory(), tmp_path / "t.sqlite", service="test")
    await p.start()
    try:
        assert await p.wait_for(ack.seq)
        rows = await p.read(
            lambda c: c.execute("SELECT id, name, created_by, seq FROM tenants").fetchall()
        )
        rejected = await p.read(lambda c: c.execute("SELECT * FROM _rejected").fetchall())
    finally:
        await p.stop()
    assert rows == [("oldco", "Old Co", "unknown", ack.seq)]
    assert rejected == []
