"""NATS connection errors as sentences that name the setting, logged once, not twice a second."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from epm_service import bus
from epm_service.bus import NatsSettingsError, check_creds_file, explained
from epm_service.settings import Settings
from nats.errors import NoServersError


def settings(**kw: object) -> Settings:
    return Settings(nats_url="nats://nats.example:4222", **kw)  # type: ignore[arg-type]


def test_refused_credentials_name_epm_nats_creds() -> None:
    text = explained(Exception("nats: 'Authorization Violation'"), settings(nats_creds="/c/x"))
    assert "refused this process's credentials" in text
    assert "EPM_NATS_CREDS (/c/x)" in text and "nats://nats.example:4222" in text


def test_an_unreachable_server_names_epm_nats_url() -> None:
    for exc in (ConnectionRefusedError(111, "Connection refused"), NoServersError()):
        text = explained(exc, settings())
        assert text.startswith("cannot reach NATS at nats://nats.example:4222")
        assert "EPM_NATS_URL" in text


def test_a_missing_creds_file_is_refused_before_connecting(tmp_path: Path) -> None:
    with pytest.raises(NatsSettingsError, match=r"EPM_NATS_CREDS is .*missing\.creds"):
        check_creds_file(settings(nats_creds=str(tmp_path / "missing.creds")))
    (tmp_path / "ok.creds").write_text("creds")
    check_creds_file(settings(nats_creds=str(tmp_path / "ok.creds")))
    check_creds_file(settings())  # none set: an open server


def test_the_same_error_is_logged_once_then_with_its_count(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [100.0]
    monkeypatch.setattr(bus.time, "monotonic", lambda: now[0])
    warn = bus._Throttled()
    with caplog.at_level(logging.WARNING, logger="epm_service.bus"):
        for _ in range(5):
            warn("cannot reach NATS")
            now[0] += 0.5
        warn("another error")
        now[0] += bus.REPEAT_LOG_SECONDS
        warn("another error")
        warn("another error")
        now[0] += bus.REPEAT_LOG_SECONDS
        warn("another error")
    assert [r.getMessage() for r in caplog.records] == [
        "cannot reach NATS",
        "another error",
        "another error",
        "another error (1 more time since it was last logged)",
    ]
