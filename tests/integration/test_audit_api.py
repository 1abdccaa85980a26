"""The audit trail over HTTP: audit-svc and the gateway on a real nats-server.

Records as people see them (actor, time received, device time), filters and
paging, tenant walls, streamed exports verified offline with the published
key, signed checkpoints, tampering found at the record, rebuild with the same
heads and the same key.
"""

from __future__ import annotations

import base64
import secrets
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from epm_audit.app import DEFINITION as AUDIT
from epm_audit.checkpoint import parse_public_keys
from epm_audit.verify import verify_lines
from epm_events.catalog import (
    Actor,
    AppInfo,
    Approved,
    ElevationPerformed,
    RequestCreated,
)
from epm_service.bus import Bus
from epm_service.publisher import EventPublisher
from epm_service.runtime import RunningService, start_service
from epm_service.settings import Settings

from tests.integration.test_gateway_api import (
    Gateway,
    assert_problem,
    gateway_settings,
    running_gateway,
)
from tests.integration.test_request_svc import eventually

__all__ = ["gateway_settings"]  # fixture

APP = AppInfo(file_name="setup.exe", sha256="ab" * 32, publisher="Contoso", app_name="Setup")
TECH = Actor(kind="technician", id="tenant_technician:alice")
DEVICE_TIME = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)
CHECKPOINT_RECORDS = 4


class Stack:
    def __init__(self, gw: Gateway, settings: Settings) -> None:
        self.gw = gw
        self.settings = settings
        self.audit: RunningService | None = None

    async def start_audit(self) -> None:
        self.audit = await start_service(AUDIT, self.settings)

    async def stop_audit(self) -> None:
        assert self.audit is not None
        await self.audit.stop()
        self.audit = None

    @property
    def db(self) -> Path:
        return self.settings.db_path("audit-svc-audit")

    async def records(self, token: str | None = None, **params: Any) -> list[dict[str, Any]]:
        """Every page of GET /v1/audit, following next_cursor."""
        out: list[dict[str, Any]] = []
        cursor = None
        while True:
            query = {**params, **({"cursor": cursor} if cursor else {})}
            r = await self.gw.get("/v1/audit", token=token, params=query)
            assert r.status_code == 200, r.text
            page = r.json()
            out.extend(page["items"])
            cursor = page.get("next_cursor")
            if not cursor:
                return out

    async def export(self, token: str | None = None, **params: Any) -> list[bytes]:
        r = await self.gw.get("/v1/audit/export", token=token, params=params)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/x-ndjson")
        return r.content.splitlines()

    async def keys(self) -> dict[str, bytes]:
        r = await self.gw.get("/v1/audit/keys")
        assert r.status_code == 200, r.text
        return parse_public_keys(r.json())


@pytest.fixture
async def stack(
    bus: Bus, gateway_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Stack]:
    monkeypatch.setenv("EPM_AUDIT_CHECKPOINT_RECORDS", str(CHECKPOINT_RECORDS))
    monkeypatch.setenv("EPM_AUDIT_CHECKPOINT_INTERVAL", "1h")
    gateway_settings.master_key = base64.b64encode(secrets.token_bytes(32)).decode()
    assert gateway_settings.bootstrap_token_file is not None
    admin = gateway_settings.bootstrap_token_file.read_text().strip()
    async with running_gateway(gateway_settings, admin) as gw:
        s = Stack(gw, gateway_settings)
        await s.start_audit()
        try:
            yield s
        finally:
            if s.audit is not None:
                await s.stop_audit()


async def traffic(stack: Stack, bus: Bus) -> dict[str, str]:
    """Two tenants with a request approved by a technician and an offline elevation each;
    returns tokens of several roles."""
    gw = stack.gw
    await gw.tenant("acme")
    await gw.tenant("globex")
    tokens = {
        "acme_tech": (await gw.token("tenant_technician", "acme"))["token"],
        "acme_integrator": (await gw.token("integrator", "acme"))["token"],
        "msp_tech": (await gw.token("msp_technician", None))["token"],
    }
    pub = EventPublisher(bus.js, "/epm/request-svc")
    now = datetime.now(UTC)
    envelopes = []
    for tenant in ("acme", "globex"):
        for i in range(3):
            request_id = f"req-{tenant}-{i}"
            created = RequestCreated(
                request_id=request_id,
                device_id=f"dev-{tenant}-{i % 2}",
                user=f"bob{i}",
                app=APP,
                created_at=now,
                expires_at=now + timedelta(days=4),
            )
            envelopes.append(pub.envelope(created, tenant))
            approved = Approved(request_id=request_id, scope="once", by=TECH)
            envelopes.append(pub.envelope(approved, tenant))
        offline = ElevationPerformed(
            device_id=f"dev-{tenant}-0",
            device_seq=1,
            device_time=DEVICE_TIME,
            record_hash="0" * 64,
            user="carol",
            app=APP,
        )
        envelopes.append(pub.envelope(offline, tenant))
    await pub.publish(envelopes)
    return tokens


async def test_records_show_actor_time_received_and_device_time(stack: Stack, bus: Bus) -> None:
    await traffic(stack, bus)
    records = await eventually(
        lambda: stack.records(tenant="acme", type="ElevationPerformed"), timeout=20
    )
    [offline] = records
    assert offline["actor"] == {"kind": "agent", "id": "/agents/acme/dev-acme-0"}
    assert offline["device_time"] == "2025-03-01T09:30:00Z"
    assert offline["device"] == "dev-acme-0"
    assert offline["user"] == "carol"
    received = datetime.fromisoformat(offline["received_at"][:26] + "+00:00")
    assert abs(received - datetime.now(UTC)) < timedelta(minutes=5)
    assert offline["event"]["data"]["device_time"] == "2025-03-01T09:30:00Z"

    [approved] = await stack.records(tenant="acme", type="Approved", request="req-acme-1")
    assert approved["actor"] == {"kind": "technician", "id": "tenant_technician:alice"}
    assert "device_time" not in approved
    [created] = await stack.records(tenant="acme", type="TenantCreated")
    assert created["actor"]["kind"] == "technician"  # the bootstrap admin, by name


async def test_filters_and_paging(stack: Stack, bus: Bus) -> None:
    await traffic(stack, bus)
    await eventually(lambda: stack.records(tenant="globex", type="ElevationPerformed"), timeout=20)

    by_device = await stack.records(tenant="acme", device="dev-acme-1")
    assert [(r["type"], r["request"]) for r in by_device] == [
        ("RequestCreated", "req-acme-1"),
        ("Approved", "req-acme-1"),  # the decision, by its request's device
    ]
    by_user = await stack.records(user="bob2")
    assert sorted((r["tenant"], r["type"]) for r in by_user) == [
        ("acme", "Approved"),
        ("acme", "RequestCreated"),
        ("globex", "Approved"),
        ("globex", "RequestCreated"),
    ]
    by_request = await stack.records(request="req-globex-0")
    assert [r["type"] for r in by_request] == ["RequestCreated", "Approved"]

    everything = await stack.records(tenant="acme")
    paged = await stack.records(tenant="acme", limit=2)
    assert [r["seq"] for r in paged] == [r["seq"] for r in everything]
    assert len(everything) >= 8  # TenantCreated, 3 x (created, approved), offline, tokens...

    middle = everything[3]["received_at"]
    later = await stack.records(tenant="acme", since=middle)
    earlier = await stack.records(tenant="acme", until=middle)
    assert [r["seq"] for r in earlier + later] == [r["seq"] for r in everything]

    r = await stack.gw.get("/v1/audit", params={"cursor": "not-a-cursor"})
    assert "next_cursor" in assert_problem(r, 422)["detail"]


async def test_decisions_are_found_by_their_requests_user_and_device_also_after_a_rebuild(
    stack: Stack, bus: Bus
) -> None:
    await traffic(stack, bus)
    await eventually(lambda: stack.records(tenant="globex", type="ElevationPerformed"), timeout=20)

    async def answers() -> list[list[dict[str, Any]]]:
        return [
            await stack.records(type="Approved", user="bob1"),
            await stack.records(tenant="acme", device="dev-acme-0"),
        ]

    approved, on_device = await answers()
    assert [(r["tenant"], r["request"], r["user"], r["device"]) for r in approved] == [
        ("acme", "req-acme-1", "bob1", "dev-acme-1"),
        ("globex", "req-globex-1", "bob1", "dev-globex-1"),
    ]
    assert approved[0]["actor"] == {"kind": "technician", "id": "tenant_technician:alice"}
    assert [(r["type"], r.get("request")) for r in on_device] == [
        ("RequestCreated", "req-acme-0"),
        ("Approved", "req-acme-0"),
        ("RequestCreated", "req-acme-2"),
        ("Approved", "req-acme-2"),
        ("ElevationPerformed", None),
    ]
    lines = await stack.export(tenant="acme")  # export lines stay the record's own
    assert verify_lines(lines, await stack.keys()).ok
    exported = next(orjson.loads(line) for line in lines if b'"type":"Approved"' in line)
    assert "user" not in exported

    await stack.stop_audit()
    for f in stack.db.parent.glob(f"{stack.db.name}*"):
        f.unlink()
    await stack.start_audit()

    async def same_answers() -> bool:
        return await answers() == [approved, on_device]

    assert await eventually(same_answers, timeout=20)


async def test_an_unknown_type_is_refused_naming_the_event_types(stack: Stack) -> None:
    r = await stack.gw.get("/v1/audit", params={"type": "NoSuchType"})
    detail = assert_problem(r, 422)["detail"]
    assert "'NoSuchType' is not an event type" in detail
    assert "Approved" in detail and "RequestCreated" in detail


async def test_tenant_roles_see_their_tenant_only(stack: Stack, bus: Bus) -> None:
    tokens = await traffic(stack, bus)
    await eventually(lambda: stack.records(tenant="globex", type="ElevationPerformed"), timeout=20)

    for role in ("acme_tech", "acme_integrator"):
        token = tokens[role]
        mine = await stack.records(token=token)
        assert mine and {r["tenant"] for r in mine} == {"acme"}
        for other in ("globex", "_global", "nobody"):
            for path in ("/v1/audit", "/v1/audit/export", "/v1/audit/verify"):
                r = await stack.gw.get(path, token=token, params={"tenant": other})
                assert_problem(r, 404)
        lines = await stack.export(token=token)
        assert {orjson.loads(line)["tenant"] for line in lines} == {"acme"}
        verdict = (await stack.gw.get("/v1/audit/verify", token=token)).json()
        assert verdict["ok"] and set(verdict["chains"]) == {"acme"}

    everyone = await stack.records(token=tokens["msp_tech"])
    assert {"acme", "globex", "_global"} <= {r["tenant"] for r in everyone}


async def test_export_verifies_offline_with_the_published_key(stack: Stack, bus: Bus) -> None:
    await traffic(stack, bus)
    await eventually(lambda: stack.records(tenant="acme", type="AuditCheckpointSigned"), timeout=20)
    keys = await stack.keys()
    assert list(keys) == ["audit-1"]

    lines = await stack.export(tenant="acme")
    verdict = verify_lines(lines, keys)
    assert verdict.ok, verdict
    assert verdict.checkpoints >= 1 and verdict.signed_records >= CHECKPOINT_RECORDS
    server = (await stack.gw.get("/v1/audit/verify", params={"tenant": "acme"})).json()
    assert (server["ok"], server["head"]) == (True, verdict.head)
    assert verdict.records <= server["records"]  # the trail may have grown since

    whole = await stack.export()
    assert verify_lines(whole, keys).ok
    assert {orjson.loads(line)["tenant"] for line in whole} >= {"acme", "globex", "_global"}


async def test_a_changed_byte_in_an_export_names_that_record(stack: Stack, bus: Bus) -> None:
    await traffic(stack, bus)
    await eventually(lambda: stack.records(tenant="acme", type="ElevationPerformed"), timeout=20)
    keys = await stack.keys()
    lines = await stack.export(tenant="acme")
    assert verify_lines(lines, keys).ok

    for old, new in (
        (b'"user":"bob', b'"user":"eve'),  # in the event
        (b'"actor":{"kind":"technician"', b'"actor":{"kind":"system"'),  # a derived field
        (b'"device_time":"2025-03-01T09:30', b'"device_time":"2025-03-01T08:30'),
        (b'"received_ns":"1', b'"received_ns":"2'),  # the time received
    ):
        target = next(i for i, line in enumerate(lines) if i > 1 and old in line)
        tampered = list(lines)
        tampered[target] = tampered[target].replace(old, new, 1)
        verdict = verify_lines(tampered, keys)
        assert not verdict.ok
        assert verdict.first_bad == orjson.loads(lines[target])["seq"]
        assert verdict.line == target + 1

    dropped = lines[:2] + lines[3:]
    verdict = verify_lines(dropped, keys)
    assert (verdict.ok, verdict.first_bad) == (False, orjson.loads(lines[3])["seq"])


async def test_checkpoints_fail_with_another_key(stack: Stack, bus: Bus) -> None:
    await traffic(stack, bus)
    [checkpoint, *_] = await eventually(
        lambda: stack.records(tenant="acme", type="AuditCheckpointSigned"), timeout=20
    )
    assert checkpoint["actor"] == {"kind": "system", "id": "audit-svc"}
    lines = await stack.export(tenant="acme")
    impostor = (
        Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    )
    verdict = verify_lines(lines, {"audit-1": impostor})
    assert not verdict.ok
    assert verdict.first_bad == checkpoint["seq"]
    assert "does not verify" in verdict.problem
    assert not verify_lines(lines, {}).ok  # no key at all: the checkpoint cannot be trusted


async def test_a_record_tampered_in_the_database_is_found_at_that_record(
    stack: Stack, bus: Bus
) -> None:
    await traffic(stack, bus)
    [target] = await eventually(
        lambda: stack.records(tenant="globex", type="Approved", request="req-globex-1"),
        timeout=20,
    )
    assert (await stack.gw.get("/v1/audit/verify")).json()["ok"]

    conn = sqlite3.connect(stack.db)
    with conn:  # bypass the append-only triggers, as an attacker with the file would
        conn.execute("DROP TRIGGER audit_records_refuse_update")
        conn.execute(
            "UPDATE audit_records SET event = replace(event, 'alice', 'mallory') WHERE seq = ?",
            (target["seq"],),
        )
    conn.close()

    for params in ({}, {"tenant": "globex"}):
        verdict = (await stack.gw.get("/v1/audit/verify", params=params)).json()
        assert not verdict["ok"]
        assert (verdict["first_bad"], verdict["tenant"]) == (target["seq"], "globex")
        assert "hash" in verdict["problem"]
    acme = (await stack.gw.get("/v1/audit/verify", params={"tenant": "acme"})).json()
    assert acme["ok"]


async def test_deleted_trail_is_rebuilt_with_the_same_heads_key_and_checkpoints(
    stack: Stack, bus: Bus
) -> None:
    await traffic(stack, bus)
    await eventually(
        lambda: stack.records(tenant="globex", type="AuditCheckpointSigned"), timeout=20
    )
    before_keys = (await stack.gw.get("/v1/audit/keys")).json()
    before = await stack.export()
    await stack.stop_audit()
    for f in stack.db.parent.glob(f"{stack.db.name}*"):
        f.unlink()

    await stack.start_audit()
    after = await stack.export()
    assert after[: len(before)] == before  # same records, same hashes, same order
    assert (await stack.gw.get("/v1/audit/keys")).json() == before_keys
    assert verify_lines(after, await stack.keys()).ok  # the old checkpoints, the same key


async def test_after_a_master_key_rotation_checkpoints_are_signed_with_the_same_key(
    stack: Stack, bus: Bus
) -> None:
    """The signing key was sealed under the old EPM_MASTER_KEY: audit-svc given it as
    EPM_MASTER_KEY_PREVIOUS (and its trail rebuilt) opens it and goes on signing."""
    await traffic(stack, bus)
    await eventually(lambda: stack.records(tenant="acme", type="AuditCheckpointSigned"), timeout=20)
    keys_before = (await stack.gw.get("/v1/audit/keys")).json()
    await stack.stop_audit()
    for f in stack.db.parent.glob(f"{stack.db.name}*"):
        f.unlink()
    old_key = stack.settings.master_key
    stack.settings.master_key = base64.b64encode(secrets.token_bytes(32)).decode()
    stack.settings.master_key_previous = old_key

    await stack.start_audit()
    signed_before = len(await stack.records(tenant="acme", type="AuditCheckpointSigned"))
    pub = EventPublisher(bus.js, "/epm/request-svc")
    now = datetime.now(UTC)
    await pub.publish(
        [
            pub.envelope(
                RequestCreated(
                    request_id=f"req-after-rotation-{i}",
                    device_id="dev-acme-0",
                    user="bob",
                    app=APP,
                    created_at=now,
                    expires_at=now + timedelta(days=4),
                ),
                "acme",
            )
            for i in range(CHECKPOINT_RECORDS)
        ]
    )

    async def signed_after() -> list[dict[str, Any]]:
        signed = await stack.records(tenant="acme", type="AuditCheckpointSigned")
        return signed if len(signed) > signed_before else []

    await eventually(signed_after, timeout=20)
    assert (await stack.gw.get("/v1/audit/keys")).json() == keys_before  # no second key
    assert verify_lines(await stack.export(tenant="acme"), await stack.keys()).ok
