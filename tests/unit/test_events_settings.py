"""Settings read from EPM_* variables; durations are written the way people write them."""

from __future__ import annotations

import pytest
from epm_service.settings import Settings, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("10m", 600), ("4d", 4 * 86400), ("2h", 7200), ("90", 90), ("1.5m", 90)],
)
def test_request_ttl_accepts_durations(
    monkeypatch: pytest.MonkeyPatch, text: str, seconds: float
) -> None:
    monkeypatch.setenv("EPM_REQUEST_TTL", text)
    assert Settings().request_ttl == seconds


def test_request_ttl_defaults_to_four_days(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EPM_REQUEST_TTL", raising=False)
    assert Settings().request_ttl == 4 * 86400


@pytest.mark.parametrize("bad", ["4 days", "soon", "-1s", "10x"])
def test_a_duration_that_cannot_be_read_says_how_to_write_one(bad: str) -> None:
    with pytest.raises(ValueError, match=r"e\.g\. '4d'"):
        parse_duration(bad)
