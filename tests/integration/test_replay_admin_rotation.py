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


async def test_a_rotation_request_svc_did_not_make_is_made_by_approval_svc(
    bus: Bus, offline_settings: Any, monkeypatch: Any
) -> None:
    """request-svc's call is lost (approval-svc unreachable, request-svc killed after the
    append): the session stays owed in approval-svc's view and its worker rotates, once."""
    import contextlib

    import epm_approval.owed_rotations as owed_rotations
    import epm_request.replay as replay
    from epm_approval.app import DEFINITION as APPROVAL
    from epm_events.catalog import TenantCreated
    from epm_request.app import DEFINITION as REQUESTS
    from epm_service.publisher import EventPublisher
    from epm_service.runtime import start_service

    async def lost(*args: Any) -> None:
        return None

    monkeypatch.setattr(replay.OfflineReplay, "_rotate_device_key", lost)
    monkeypatch.setattr(owed_rotations, "CHECK_SECONDS", 0.2)
    pub = EventPublisher(bus.js, "/epm/gateway")
    await pub.append("acme", [TenantCreated(tenant_id="acme", name="acme", created_by="t")], 0)
    approval = await start_service(APPROVAL, offline_settings)
    requests = await start_service(REQUESTS, offline_settings)
    try:
        device = await enroll(bus)
        await upload(bus, device, admin_session(device), str(uuid.uuid4()))
        [update] = await wait_device_messages(bus, device, "key", 1)
        assert device.keys(update).key_version == 2
        [rotated] = await events_named(bus, "DeviceKeyRotated")
        assert rotated["reason"] == owed_rotations.REASON
        await asyncio.sleep(1)  # several more looks: nothing owed any more
        assert len(await events_named(bus, "DeviceKeyRotated")) == 1
    finally:
        await requests.stop()
        with contextlib.suppress(Exception):
            await approval.stop()
