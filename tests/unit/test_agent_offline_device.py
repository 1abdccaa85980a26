"""A device that enrolled with offline key material, made without a server (the agent side
of the offline flows), and the SDK's offline codes on it with a clock the test moves."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from epm_agent.device_key import DeviceKey
from epm_agent.encryption_key import EncryptionKey
from epm_agent.offline import CodeRefused, OfflineAccess, PolicyDisabled
from epm_agent.offline_log import first_break
from epm_agent.offline_state import OfflineState
from epm_agent.state import Identity, StateDir
from epm_domain.offline_codes import (
    AccessCode,
    ResponseGrant,
    issue_access_code,
    response_code,
)
from epm_domain.sealed import DeviceKeys, derive_device_keys, parse_public_key, seal_device_keys
from epm_events.catalog import AppInfo

T0 = datetime(2030, 1, 10, 12, 0, tzinfo=UTC)
SHA = "ab" * 32
APP = AppInfo(file_name="tool.exe", sha256=SHA, path="C:/tool.exe")
DEFAULT_POLICY = {
    "challenge_response": True,
    "app_codes": True,
    "admin_codes": False,
    "self_service": False,
    "max_admin_minutes": 60,
    "response_any_app": False,
}


@dataclass
class FakeServer:
    """What approval-svc knows about the device: its keys, by version (no I/O)."""

    master: bytes
    tenant: str
    device_id: str
    encryption_public: bytes
    counter: int = 0

    def keys(self, version: int = 1) -> DeviceKeys:
        return derive_device_keys(self.master, self.tenant, self.device_id, version)

    def material(self, version: int = 1) -> dict[str, Any]:
        return seal_device_keys(self.keys(version), self.encryption_public)

    def response(self, request_code: str, grant: ResponseGrant, version: int = 1) -> str:
        keys = self.keys(version)
        return response_code(keys.response, self.device_id, request_code, grant, version)

    def access_code(
        self,
        purpose: str = "app",
        *,
        today: date,
        days: int = 7,
        minutes: int = 0,
        sha256: str | None = None,
        version: int = 1,
        device_id: str | None = None,
    ) -> str:
        self.counter += 1
        code = AccessCode(
            self.counter,
            "admin" if purpose == "admin" else "app",
            today + timedelta(days=days),
            minutes=minutes,
            pinned_sha256=sha256,
        )
        keys = self.keys(version)
        return issue_access_code(
            keys.access_code, device_id or self.device_id, code, version, today
        )


def make_device(
    state_dir: Path,
    *,
    policy: dict[str, Any] | None = None,
    device_id: str = "d-0000000000000001",
    nats_url: str = "nats://127.0.0.1:1",
    master: bytes | None = None,
) -> FakeServer:
    """A state dir as enrollment leaves it (device key, encryption key, sealed key material)."""
    state = StateDir(state_dir).open()
    try:
        DeviceKey.generate().save(state.key_path)
        sealing = EncryptionKey.generate()
        sealing.save(state.encryption_key_path)
        server = FakeServer(
            master or secrets.token_bytes(32),
            "acme",
            device_id,
            parse_public_key(sealing.public_key_b64()),
        )
        state.save_identity(
            Identity(
                device_id=device_id,
                tenant="acme",
                hostname="pc-1",
                server_url="http://127.0.0.1:1",
                nats_url=nats_url,
                inbox_prefix=f"_INBOX.acme.{device_id}",
                subjects={},
                policy=dict(policy or DEFAULT_POLICY),
                key_material=server.material(1),
            )
        )
        return server
    finally:
        state.close()


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def device(tmp_path: Path) -> FakeServer:
    return make_device(tmp_path / "agent")


def access(tmp_path: Path, clock: Clock) -> OfflineAccess:
    state = StateDir(tmp_path / "agent").open()
    return OfflineAccess(state, state.require_identity(), clock)


def set_policy(tmp_path: Path, **changes: Any) -> None:
    with StateDir(tmp_path / "agent").open() as state:
        identity = state.require_identity()
        policy = {**identity.policy, **changes}
        state.db.execute("UPDATE identity SET policy = ?", (orjson.dumps(policy).decode(),))


# --- challenge-response ------------------------------------------------------------------


def test_a_response_for_the_asked_application_grants_once_and_is_logged_first(
    tmp_path: Path, device: FakeServer, clock: Clock
) -> None:
    agent = access(tmp_path, clock)
    code = agent.request_code(app=APP, user="bob")
    answer = device.response(code, ResponseGrant("app", SHA))

    granted = agent.respond(answer.lower().replace("-", " "))

    assert (granted.grant, granted.app) == ("app", APP)
    log = OfflineState(agent.state).log()
    assert [r.type for r in log] == ["OfflineCodeRedeemed", "ElevationPerformed"]
    assert log[0].record["data"]["user"] == "bob"
    assert first_break(log) is None
    with pytest.raises(CodeRefused, match="used already") as refused:
        agent.respond(answer)
    assert refused.value.reason == "used"


def test_a_response_for_another_grant_or_any_app_without_the_policy_is_wrong(
    tmp_path: Path, device: FakeServer, clock: Clock
) -> None:
    agent = access(tmp_path, clock)
    code = agent.request_code(app=APP)
    with pytest.raises(CodeRefused, match="wrong response code") as refused:
        agent.respond(device.response(code, ResponseGrant("app", None)))
    assert refused.value.extra["tries_left"] == 2
    clock.advance(seconds=2)
    with pytest.raises(CodeRefused, match="wrong response code"):
        agent.respond(device.response(code, ResponseGrant("admin", minutes=30)))


def test_any_app_responses_work_where_the_policy_allows_them(
    tmp_path: Path, device: FakeServer, clock: Clock
) -> None:
    set_policy(tmp_path, response_any_app=True)
    agent = access(tmp_path, clock)
    code = agent.request_code(app=APP)
    assert agent.respond(device.response(code, ResponseGrant("app", None))).grant == "app"


def test_admin_response_may_grant_less_than_asked_but_not_more(
    tmp_path: Path, device: FakeServer, clock: Clock
) -> None:
    agent = access(tmp_path, clock)
    code = agent.request_code(admin_minutes=60)
    with pytest.raises(CodeRefused, match="wrong"):
        agent.respond(device.response(code, ResponseGrant("admin", minutes=120)))
    clock.advance(seconds=2)
    granted = agent.respond(device.response(code, ResponseGrant("admin", minutes=30)))
    assert (granted.grant, granted.minutes) == ("admin", 30)
    assert granted.ends_at == clock.now + timedelta(minutes=30)


def test_asking_more_admin_minutes_than_the_policy_allows_is_refused(
    tmp_path: Path, device: FakeServer, clock: Clock
) -> None:
    with pytest.raises(Exception, match="1 to 60 minutes"):
        access(tmp_path, clock).request_code(admin_minutes=61)


def test_request_codes_are_never_shown_twice_and_old_ones_retire(
    tmp_path: Path, device: FakeServer, clock: Clock
) -> None:
    agent = access(tmp_path, clock)
    codes = []
    for _ in range(8):
        codes.append(agent.request_code(app=APP))
        clock.advance(seconds=1)
    assert len(set(codes)) == 8
    pending = [c.request_code for c in agent.tables.challenges("pending")]
    assert pending == codes[::-1][:5]
    # an answer to a retired request code no longer works
    with pytest.raises(CodeRefused, match="wrong"):
        agent.respond(device.response(codes[0], ResponseGrant("app", SHA)))


def test_a_request_code_waits_a_day_for_its_answer(
    tmp_path: Path, device: FakeServer, clock: Clock
) -> None:
    agent = access(tmp_path, clock)
    code = agent.request_code(app=APP)
    clock.advance(hours=25)
    with pytest.raises(CodeRefused, match="no request code is waiting"):
        agent.respond(device.response(code, ResponseGrant("app", SHA)))


def test_disabled_challenge_response_is_refused_naming_the_administrator(
    tmp_path: Path, device: FakeServer, clock: Clock
) -> None:
    set_policy(tmp_path, challenge_response=False)
    with pytest.raises(PolicyDisabled, match="your administrator disabled offline challenge"):
        access(tmp_path, clock).request_code(app=APP)


# --- access codes -----------------------------------------------------------------------


def test_an_access_code_works_once(tmp_path: Path, device: FakeServer, clock: Clock) -> None:
    agent = access(tmp_path, clock)
    code = device.access_code(today=clock.now.date(), sha256=SHA)
    assert agent.redeem(code, app=APP).grant == "app"
    with pytest.raises(CodeRefused, match="used already"):
        agent.redeem(code, app=APP)
    log = agent.tables.log()
    assert log[0].as_event().model_dump()["code_ref"] == f"access_code:v1:{device.counter}"


def test_access_code_refusals_say_why(tmp_path: Path, device: FakeServer, clock: Clock) -> None:
    agent = access(tmp_path, clock)
    today = clock.now.date()
    other_device = device.access_code(today=today, device_id="d-0000000000000002")
    with pytest.raises(CodeRefused, match="another computer") as refused:
        agent.redeem(other_device, app=APP)
    assert refused.value.reason == "wrong"
    clock.advance(seconds=2)
    expired = device.access_code(today=today - timedelta(days=3), days=1)
    with pytest.raises(CodeRefused, match="expired at the end of") as refused:
        agent.redeem(expired, app=APP)
    assert refused.value.reason == "expired"
    admin = device.access_code("admin", today=today, minutes=30)
    with pytest.raises(PolicyDisabled, match="your administrator disabled offline admin codes"):
        agent.redeem(admin)
    with pytest.raises(PolicyDisabled, match="connect once, e\\.g\\. 'epm-agent status'"):
        agent.redeem(admin)  # the copy may be stale: says how to refresh it
    with pytest.raises(CodeRefused, match="run it with --exe"):
        agent.redeem(device.access_code(today=today))


def test_a_rotated_key_refuses_codes_of_the_old_version(
    tmp_path: Path, device: FakeServer, clock: Clock
) -> None:
    agent = access(tmp_path, clock)
    today = clock.now.date()
    old = device.access_code(today=today)
    assert agent.tables.save_key_material(2, device.material(2), "rotated")
    assert not agent.tables.save_key_material(1, device.material(1), "replayed")
    with pytest.raises(CodeRefused, match="key version 1, which was rotated") as refused:
        agent.redeem(old, app=APP)
    assert refused.value.reason == "rotated"
    assert agent.redeem(device.access_code(today=today, version=2), app=APP).grant == "app"


def test_an_admin_session_ends_at_its_time_even_when_noticed_later(
    tmp_path: Path, device: FakeServer, clock: Clock
) -> None:
    set_policy(tmp_path, admin_codes=True)
    agent = access(tmp_path, clock)
    started = clock.now
    granted = agent.redeem(device.access_code("admin", today=clock.now.date(), minutes=15))
    assert granted.minutes == 15
    agent.state.close()  # the agent stops; the computer sleeps through the end

    clock.advance(hours=3)
    agent = access(tmp_path, clock)
    [ended] = agent.close_expired_sessions()
    assert agent.close_expired_sessions() == []
    log = agent.tables.log()
    assert [r.type for r in log] == [
        "OfflineCodeRedeemed",
        "AdminSessionStarted",
        "AdminSessionEnded",
    ]
    assert log[2].as_event().device_time == started + timedelta(minutes=15)
    assert ended.ends_at == started + timedelta(minutes=15)
    assert first_break(log) is None
