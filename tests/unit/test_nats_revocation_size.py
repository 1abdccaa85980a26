"""The account JWT lists every revoked NATS user (device creds do not expire): request-svc
says in a sentence an operator can act on when it outgrows the servers' max_payload, and
the deployed configuration leaves room for tens of thousands of revocations."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from epm_request.nats_credentials import account_jwt_problem
from epm_service.natsauth import AuthKeys

from tests.unit.test_deploy_nats import BASE_CONF, CLUSTER_CONF


def _max_payload(conf: str) -> int:
    m = re.search(r"^max_payload:\s*(\d+)\s*MB\s*$", conf, re.MULTILINE)
    assert m, "the NATS configuration sets max_payload in MB"
    return int(m.group(1)) * 1024 * 1024


def test_an_account_jwt_over_max_payload_is_refused_with_what_to_do() -> None:
    problem = account_jwt_problem(jwt_bytes=1_100_000, max_payload=1_048_576, revoked=13_500)
    assert problem is not None
    assert "13500 NATS users" in problem and "1100000 bytes" in problem
    assert "raise max_payload" in problem and "nats.conf" in problem


def test_an_account_jwt_within_max_payload_has_no_problem() -> None:
    assert account_jwt_problem(jwt_bytes=1_048_576, max_payload=1_048_576, revoked=1) is None
    assert account_jwt_problem(jwt_bytes=500, max_payload=0, revoked=1) is None  # unknown


def test_the_deployed_servers_take_an_account_jwt_revoking_ten_thousand_users() -> None:
    issuer = AuthKeys.create().issuer()
    users = [issuer.device_user("acme", f"dev-{i:06d}").public for i in range(10_000)]
    jwt = issuer.account_jwt(users).encode()
    assert 90 * 10_000 < len(jwt) < 110 * 10_000  # about 100 bytes a revoked user
    for conf in (BASE_CONF, CLUSTER_CONF):
        limit = _max_payload(conf.read_text())
        assert account_jwt_problem(len(jwt), limit, len(users)) is None, conf


async def test_operator_mode_without_an_issuer_is_logged_as_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A request-svc with a NATS user of its own but no EPM_NATS_ISSUER would enroll devices
    without NATS users and leave revoked ones connected: said at start, not silently."""
    from epm_request.nats_credentials import DeviceCredentials
    from epm_service.settings import Settings

    creds = tmp_path / "request-svc.creds"
    creds.write_text("creds")
    settings = Settings(nats_creds=str(creds), data_dir=tmp_path)
    with caplog.at_level(logging.ERROR):
        await DeviceCredentials(settings, store=None).start()  # type: ignore[arg-type]
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "EPM_NATS_ISSUER is not set" in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.ERROR):  # an open server (epm dev without auth): nothing to say
        await DeviceCredentials(Settings(data_dir=tmp_path), store=None).start()  # type: ignore[arg-type]
    assert not caplog.records
