"""The pure parts of the agent's offline codes: the lockout schedule, the offline log chain,
and tolerant input through the ``epm-agent`` command line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from epm_agent.cli import main
from epm_agent.lockout import Lockout, after_failure, after_lift, after_success, may_try
from epm_agent.offline_log import GENESIS, LogRecord, first_break, new_record
from epm_agent.offline_state import OfflineState
from epm_agent.state import StateDir
from epm_domain.offline_codes import CROCKFORD, MAX_TRIES, ResponseGrant
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.test_agent_offline_device import SHA, make_device

T0 = datetime(2030, 1, 10, 12, 0, tzinfo=UTC)


def fail_n(state: Lockout, n: int, now: datetime) -> Lockout:
    for _ in range(n):
        state = after_failure(state, now)
    return state


def test_wrong_tries_wait_longer_each_time_then_lock_the_device() -> None:
    state = after_failure(Lockout(), T0)
    wait = may_try(state, T0 + timedelta(seconds=1))
    assert wait is not None and (wait.seconds, wait.locked) == (1, False)
    assert may_try(state, T0 + timedelta(seconds=2)) is None
    state = after_failure(state, T0 + timedelta(seconds=2))
    assert may_try(state, T0 + timedelta(seconds=5)) is not None  # 4 s after the second
    assert may_try(state, T0 + timedelta(seconds=6)) is None
    state = after_failure(state, T0 + timedelta(seconds=6))
    assert MAX_TRIES == 3 and state.locked(T0 + timedelta(seconds=6))
    wait = may_try(state, T0 + timedelta(seconds=7))
    assert wait is not None and wait.locked and "help desk" in wait.message


def test_each_lockout_doubles_the_cool_off_up_to_a_day() -> None:
    state, lengths, now = Lockout(), [], T0
    for _ in range(11):
        state = fail_n(state, MAX_TRIES, now)
        lengths.append(state.cooloff_seconds)
        assert state.locked_until is not None
        now = state.locked_until
        assert may_try(state, now) is None
    assert lengths == [300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 76800, 86400, 86400]


def test_a_lift_ends_the_lockout_now_and_a_good_code_resets_the_doubling() -> None:
    locked = fail_n(Lockout(), MAX_TRIES, T0)
    lifted = after_lift(locked)
    assert may_try(lifted, T0) is None
    assert fail_n(lifted, MAX_TRIES, T0).cooloff_seconds == 600
    assert fail_n(after_success(locked), MAX_TRIES, T0).cooloff_seconds == 300


def chain(n: int) -> list[LogRecord]:
    records, prev = [], GENESIS
    for seq in range(1, n + 1):
        r = new_record(
            "AdminSessionEnded" if seq % 2 else "AdminSessionStarted",
            device_id="d-1",
            seq=seq,
            device_time="2030-01-10T12:00:00.000Z",
            prev_hash=prev,
            fields={"user": "bob"} | ({} if seq % 2 else {"minutes": 30}),
        )
        records.append(r)
        prev = r.hash
    return records


def test_the_offline_log_chains_and_any_edit_drop_or_swap_breaks_it() -> None:
    records = chain(5)
    assert first_break(records) is None
    edited = LogRecord(
        3,
        records[2].prev_hash,
        records[2].hash,
        {**records[2].record, "type": "AdminSessionStarted"},
    )
    tampered = dict(records[2].record["data"], user="mallory")
    forged = LogRecord(
        3, records[2].prev_hash, records[2].hash, {**records[2].record, "data": tampered}
    )
    assert first_break([*records[:2], forged, *records[3:]]) == 3
    assert first_break([*records[:2], edited, *records[3:]]) == 3
    assert first_break([records[0], records[2], records[3]]) == 3
    assert first_break([records[1], records[0]]) == 2


def test_each_record_uploads_as_its_catalog_event() -> None:
    event = chain(2)[1].as_event()
    assert type(event).__name__ == "AdminSessionStarted"
    assert (event.device_seq, event.record_hash) == (2, chain(2)[1].hash)
    with pytest.raises(ValueError):
        new_record(
            "ElevationPerformed",
            device_id="d-1",
            seq=1,
            device_time="2030-01-10T12:00:00.000Z",
            prev_hash=GENESIS,
            fields={"user": "bob"},  # no app: could not be uploaded, so never written
        )


def typed_variants() -> st.SearchStrategy[tuple[list[int], list[bool], str]]:
    return st.tuples(
        st.lists(st.sampled_from([0, 1, 2]), min_size=12, max_size=12),  # O/0, I/L/1 swaps
        st.lists(st.booleans(), min_size=12, max_size=12),  # lower case
        st.sampled_from(["-", "", " ", "--"]),
    )


def retype(code: str, swaps: list[int], lower: list[bool], sep: str) -> str:
    chars = []
    for c, swap, low in zip(code.replace("-", ""), swaps, lower, strict=True):
        if c == "0" and swap:
            c = "O"
        elif c == "1" and swap:
            c = "IL"[swap - 1]
        chars.append(c.lower() if low else c)
    text = "".join(chars)
    return sep.join([text[:4], text[4:8], text[8:]])


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(variant=typed_variants())
def test_a_response_code_typed_any_tolerated_way_is_accepted_by_the_command_line(
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
    variant: tuple[list[int], list[bool], str],
) -> None:
    state_dir = tmp_path_factory.mktemp("agent")
    server = make_device(state_dir)
    common = ("--state-dir", str(state_dir), "--offline", "--json")
    assert main(["offline", "request-code", "--exe", "tool.exe", "--sha256", SHA, *common]) == 0
    request_code = orjson.loads(capsys.readouterr().out)["request_code"]
    answer = server.response(request_code, ResponseGrant("app", SHA))
    assert set(answer.replace("-", "")) <= set(CROCKFORD)

    code = main(["offline", "respond", retype(answer, *variant), *common])

    out = orjson.loads(capsys.readouterr().out)
    assert code == 0, out
    assert out["granted"] is True and out["grant"] == "app"


def test_lockout_and_log_survive_closing_the_state(tmp_path: Path) -> None:
    make_device(tmp_path / "a")
    with StateDir(tmp_path / "a").open() as state:
        OfflineState(state).record_failure(T0)
    with StateDir(tmp_path / "a").open() as state:
        assert OfflineState(state).lockout().failures == 1
