"""An offline full-admin session, replayed: request-svc has approval-svc rotate the device
key (DeviceKeyRotated, DESIGN.md "Offline codes"), once per session however often the
upload comes, and the device receives the new key version on its channel."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from epm_agent.device_key import DeviceKey
from epm_agent.elevation import signed_data
from epm_agent.offline_log import GENESIS, LogRecord, new_record
from epm_events.agent import REPLAY_KIND, OfflineLogBatch
from epm_service.bus import Bus

from tests.integration.test_offline_codes_service import events_named
from tests.integration.test_offline_policy import (
    Device,
    enroll,
    offline_settings,
    services,
    wait_device_messages,
)

__all__ = ["offline_settings", "services"]  # fixtures


def admin_session(device: Device) -> list[LogRecord]:
    started = new_record(
        "AdminSessionStarted",
        device_id=device.device_id,
        seq=1,
        device_time="2026-03-01T08:30:00Z",
        prev_hash=GENESIS,
        fields={"user": "bob", "minutes": 30},
    )
    ended = new_record(
        "AdminSessionEnded",
        device_id=device.device_id,
        seq=2,
        device_time="2026-03-01T09:00:00Z",
        prev_hash=started.hash,
        fields={"user": "bob"},
    )
    return [started, ended]


def batch_data(records: list[LogRecord]) -> dict[str, Any]:
    return {
        "first_seq": records[0].seq,
        "last_seq": records[-1].seq,
        "chain_head": records[-1].hash,
        "records": [
            {
                "type": r.type,
                "data": r.record["data"],
                "prev_hash": r.prev_hash,
                "record_hash": r.hash,
            }
            for r in records
        ],
    }


async def upload(bus: Bus, device: Device, records: list[LogRecord], msg_id: str) -> None:
    """Publish the batch as the agent signs it (``msg_id``: another id, as a re-send outside
    the stream's duplicate window has) and wait for request-svc's acknowledgement."""
    message = signed_data(
        DeviceKey(device.signing_key),
        tenant=device.tenant,
        device_id=device.device_id,
        name=OfflineLogBatch.NAME,
        version=OfflineLogBatch.VERSION,
        data=batch_data(records),
        msg_id=msg_id,
    )
    acks = await bus.nc.subscribe(f"epm.device.{device.tenant}.{device.device_id}.{REPLAY_KIND}")
    try:
        await bus.js.publish(message.subject, message.body, headers=message.headers)
        await asyncio.wait_for(acks.next_msg(timeout=20), 25)
    finally:
        await acks.unsubscribe()


async def test_a_replayed_admin_session_rotates_the_device_key_once(
    bus: Bus, services: Any
) -> None:
    device = await enroll(bus)
    records = admin_session(device)
    await upload(bus, device, records, str(uuid.uuid4()))
    [update] = await wait_device_messages(bus, device, "key", 1)
    keys = device.keys(update)  # what the agent does with it at its next contact
    assert keys.key_version == 2 and keys.access_code != device.keys().access_code
    [rotated] = await events_named(bus, "DeviceKeyRotated")
    assert rotated["device_id"] == device.device_id and "system" in rotated["rotated_by"]

    await upload(bus, device, records, str(uuid.uuid4()))  # the same session, replayed again
    await asyncio.sleep(1)
    assert len(await events_named(bus, "DeviceKeyRotated")) == 1
