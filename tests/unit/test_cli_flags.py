"""Duration flags of epm dev and the backoff of restarted children."""

from __future__ import annotations

import pytest
import typer
from epm_cli.dev.children import MAX_RESTART_DELAY, describe_exit, restart_delay
from epm_cli.dev.command import parse_duration_flag


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("10m", 600), ("4d", 345600), ("2h", 7200), ("90", 90)]
)
def test_durations_accept_seconds_minutes_hours_and_days(text: str, seconds: float) -> None:
    assert parse_duration_flag(text, "--request-ttl") == seconds


@pytest.mark.parametrize("text", ["soon", "4w", "", "-1s"])
def test_a_bad_duration_names_the_flag_and_the_accepted_forms(text: str) -> None:
    with pytest.raises(typer.BadParameter) as caught:
        parse_duration_flag(text, "--request-ttl")
    assert caught.value.param_hint == "--request-ttl"
    assert "4d" in str(caught.value)


def test_a_zero_duration_is_refused() -> None:
    with pytest.raises(typer.BadParameter, match="more than 0"):
        parse_duration_flag("0s", "--startup-timeout")


def test_restart_delays_double_up_to_a_cap() -> None:
    delays = [restart_delay(n) for n in range(1, 12)]
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0]
    assert delays == sorted(delays)
    assert delays[-1] == MAX_RESTART_DELAY


def test_an_exit_is_described_by_signal_name_or_code() -> None:
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(3) == "exit code 3"
