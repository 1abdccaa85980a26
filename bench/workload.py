"""Realistic domain events for the benchmarks: a day of an MSP's elevation traffic.

Several tenants plus the MSP chain (``_global``); mostly requests and their
outcomes, some rules, offline replays and notifications, with the field sizes
real agents send (paths, command lines, reasons).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from epm_events.catalog import (
    Actor,
    AppInfo,
    Approved,
    Denied,
    ElevationPerformed,
    Event,
    NotificationSent,
    RequestCreated,
    RuleCreated,
    RuleMatch,
)
from epm_events.codec import encode
from epm_events.envelope import Envelope, new_envelope, service_source, subject_of
from epm_events.ids import GLOBAL_TENANT

APPS = [
    ("setup.exe", "Contoso Ltd", "Contoso Installer", r"C:\Users\{u}\Downloads\setup.exe"),
    (
        "vs_code.exe",
        "Microsoft Corporation",
        "Visual Studio Code",
        r"C:\Program Files\VS Code\code.exe",
    ),
    ("zoom_x64.msi", "Zoom Video Communications", "Zoom", r"C:\Users\{u}\Downloads\zoom_x64.msi"),
    ("regedit.exe", "Microsoft Windows", "Registry Editor", r"C:\Windows\regedit.exe"),
    ("python-3.11.9.exe", "Python Software Foundation", "Python", r"D:\tools\python-3.11.9.exe"),
]


@dataclass(frozen=True, slots=True)
class Prepared:
    """An event ready to publish: the envelope, and its subject, id and bytes pre-built."""

    envelope: Envelope
    subject: str
    msg_id: str
    payload: bytes


def tenants(count: int) -> list[str]:
    return [f"customer-{i:03d}" for i in range(count)] + [GLOBAL_TENANT]


def workload(n: int, tenant_count: int = 20, seed: int = 7) -> list[Prepared]:
    rnd = random.Random(seed)
    names = tenants(tenant_count)
    start = datetime(2025, 3, 3, 8, 0, tzinfo=UTC)
    out: list[Prepared] = []
    i = 0
    while len(out) < n:
        tenant = rnd.choice(names)
        when = start + timedelta(seconds=i)
        for event in _story(rnd, tenant, i, when):
            env = new_envelope(event, tenant=tenant, source=_source(event), time=when)
            out.append(Prepared(env, subject_of(env), env.id, encode(env)))
        i += 1
    return out[:n]


def _source(event: Event) -> str:
    return service_source("approval-svc" if isinstance(event, RuleCreated) else "request-svc")


def _story(rnd: random.Random, tenant: str, i: int, when: datetime) -> list[Event]:
    """One request and what follows it, or a rule, or an offline replay."""
    user = f"user{rnd.randrange(500):03d}"
    device = f"dev-{rnd.randrange(2000):04d}"
    file_name, publisher, app_name, path = rnd.choice(APPS)
    app = AppInfo(
        file_name=file_name,
        sha256=f"{rnd.getrandbits(256):064x}",
        publisher=publisher,
        app_name=app_name,
        path=path.format(u=user),
        command_line=f'"{path.format(u=user)}" /quiet /norestart /log C:\\Temp\\install-{i}.log',
    )
    roll = rnd.random()
    if tenant == GLOBAL_TENANT or roll < 0.05:
        return [
            RuleCreated(
                rule_id=f"rule-{i:08d}",
                name=f"Allow {app_name}",
                scope="global" if tenant == GLOBAL_TENANT else "tenant",
                effect="allow",
                match=RuleMatch(sha256=app.sha256, publisher=publisher, app_name=app_name),
                created_by="tech@msp.example",
            )
        ]
    if roll < 0.15:
        return [
            ElevationPerformed(
                device_id=device,
                device_seq=i + 1,
                device_time=when,
                record_hash=f"{rnd.getrandbits(256):064x}",
                user=user,
                app=app,
            )
        ]
    request_id = f"req-{i:08d}"
    created = RequestCreated(
        request_id=request_id,
        device_id=device,
        user=user,
        app=app,
        reason="Need to install the vendor's update for the accounting package before month end.",
        created_at=when,
        expires_at=when + timedelta(days=4),
    )
    tech = Actor(kind="technician", id="tech@msp.example")
    decided: Event = (
        Approved(request_id=request_id, scope="once", by=tech, grant_id=f"grant-{i:08d}")
        if roll < 0.7
        else Denied(request_id=request_id, scope="once", by=tech, reason="Not on the approved list")
    )
    notified = NotificationSent(
        notification_id=f"ntf-{i:08d}",
        channel_id="chan-webhook",
        source_event_id=f"src-{i:08d}",
        attempt=1,
    )
    return [created, notified, decided]
