"""``epm request show`` in text mode tells the decision: what, scope, who, rule, reason."""

from __future__ import annotations

from typing import Any

import pytest
from epm_cli.main import app
from epm_cli.technician.api import Api
from typer.testing import CliRunner

ENV = {"EPM_URL": "http://gateway.test", "COLUMNS": "200"}


def request(**extra: Any) -> dict[str, Any]:
    return {
        "id": "req-1",
        "tenant": "acme",
        "device_id": "d-1",
        "user": "bob",
        "status": "open",
        "app": {"file_name": "setup.exe", "sha256": "ab" * 32, "path": "C:\\setup.exe"},
        "reason": "install",
        "history": [
            {"seq": 3, "time": "2025-03-01T00:00:00Z", "type": "RequestCreated", "data": {}}
        ],
        **extra,
    }


def show(monkeypatch: pytest.MonkeyPatch, answer: dict[str, Any]) -> str:
    monkeypatch.setattr(Api, "call", lambda *_, **__: answer)
    done = CliRunner().invoke(app, ["request", "show", "req-1"], env=ENV)
    assert done.exit_code == 0, done.output
    return str(done.stdout)


def test_a_decided_request_shows_who_decided_in_which_scope_by_which_rule_and_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decided = request(
        status="approved",
        decision={
            "decision": "approve",
            "scope": "tenant",
            "by": "ann",
            "by_kind": "technician",
            "rule_id": "rule-9",
            "at": "2025-03-01T00:05:00Z",
        },
    )
    decided["history"].append(
        {
            "seq": 9,
            "time": "2025-03-01T00:05:00Z",
            "type": "Approved",
            "data": {"scope": "tenant", "reason": "ticket 42"},
        }
    )
    out = show(monkeypatch, decided)
    assert (
        "decision: approve (tenant) by ann (technician) at 2025-03-01T00:05:00Z" in out.splitlines()
    )
    assert "rule rule-9" in out
    assert "reason: ticket 42" in out


def test_an_open_request_says_it_is_not_decided_yet(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "decision: none yet" in show(monkeypatch, request()).splitlines()


def test_an_expired_request_says_nobody_decided(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "decision: none" in show(monkeypatch, request(status="expired")).splitlines()
