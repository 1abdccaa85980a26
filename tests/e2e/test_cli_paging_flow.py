"""Paged ``epm`` lists against a real ``epm dev`` stack: following the ``more:`` lines,
exactly as printed, walks one listing (its tenant, its filters) to its end."""

from __future__ import annotations

import shlex

import pytest

from tests.e2e.devstack import epm, wait_for
from tests.e2e.test_requests_flow import Stack, exe, request, stack

__all__ = ["stack"]  # the requests flow's epm dev stack, one for this module
pytestmark = pytest.mark.slow


def follow(*args: str, most: int = 20) -> tuple[list[list[str]], list[str]]:
    """Run ``epm ARGS`` in text mode, then each ``more:`` line it prints: the table rows of
    every page (header left out) and the commands run."""
    rows: list[list[str]] = []
    commands = [list(args)]
    while len(commands) <= most:
        done = epm(*commands[-1])
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        hint = [line for line in lines if line.startswith("more: ")]
        rows += [line.split() for line in lines[1:] if not line.startswith("more: ")]
        if not hint:
            return rows, [" ".join(c) for c in commands]
        words = shlex.split(hint[0].removeprefix("more: "))
        assert words[0] == "epm"
        commands.append(words[1:])
    raise AssertionError(f"no last page after {most} pages: {commands}")


def test_following_more_lines_lists_every_tenant_once(stack: Stack) -> None:
    names = ["page-a", "page-b", "page-c", "page-d", "page-e"]
    for name in names:
        stack.ok("tenant", "create", name, "--name", name.upper())
    data = ["--data-dir", str(stack.dev.data_dir)]
    rows, commands = follow("tenant", "list", "--limit", "2", *data)
    listed = [row[0] for row in rows]
    assert sorted(set(listed)) == sorted(listed)  # no page twice
    assert set(names) <= set(listed)
    assert all("--limit 2" in c for c in commands[1:])


def test_following_more_lines_keeps_to_the_tenant_and_status_asked_for(stack: Stack) -> None:
    for t in ("pager-x", "pager-y"):
        stack.ok("tenant", "create", t, "--name", t)
    x, y = stack.enroll("pager-x", "px"), stack.enroll("pager-y", "py")
    mine = [request(x, exe(stack.tmp, f"tool{i}.exe"))["request_id"] for i in range(3)]
    request(y, exe(stack.tmp, "other.exe"))  # another tenant's, between none of the pages
    data = ["--data-dir", str(stack.dev.data_dir)]
    wait_for(
        "pager-x's three requests listed",
        lambda: len(stack.ok("request", "list", "--tenant", "pager-x")["items"]) == 3,
        30.0,
    )
    rows, commands = follow("request", "list", "--tenant", "pager-x", "--limit", "1", *data)
    assert [row[0] for row in rows] == mine
    assert {row[1] for row in rows} == {"pager-x"}
    assert len(commands) >= 3
    assert all("--tenant pager-x --limit 1" in c for c in commands[1:])

    wait_for(
        "the three requests in pager-x's audit",
        lambda: (
            len(
                stack.ok("audit", "list", "--tenant", "pager-x", "--type", "RequestCreated")[
                    "items"
                ]
            )
            == 3
        ),
        30.0,
    )
    audit, _ = follow(
        *("audit", "list", "--tenant", "pager-x", "--type", "RequestCreated", "--limit", "1"),
        *data,
    )
    assert len(audit) == 3
    assert {row[1] for row in audit} == {"pager-x"}
    assert {row[2] for row in audit} == {"RequestCreated"}


def test_following_more_lines_lists_every_rule_of_the_tenant_once(stack: Stack) -> None:
    stack.ok("tenant", "create", "pager-r", "--name", "pager-r")
    made = [
        stack.ok(
            "rule",
            "create",
            "--tenant",
            "pager-r",
            "--name",
            f"r{i}",
            "--allow",
            "--publisher",
            f"Publisher {i}",
        )["id"]
        for i in range(3)
    ]
    data = ["--data-dir", str(stack.dev.data_dir)]
    wait_for(
        "pager-r's three rules listed",
        lambda: len(stack.ok("rule", "list", "--tenant", "pager-r")["items"]) == 3,
        30.0,
    )
    rows, commands = follow("rule", "list", "--tenant", "pager-r", "--limit", "1", *data)
    assert sorted(row[0] for row in rows) == sorted(made)
    assert len(commands) == 3


def test_following_more_lines_lists_every_device_once_open_requests_first_revoked_last(
    stack: Stack,
) -> None:
    stack.ok("tenant", "create", "pager-d", "--name", "pager-d")
    agents = {name: stack.enroll("pager-d", name) for name in ("pd-c", "pd-a", "pd-b")}
    request(agents["pd-c"], exe(stack.tmp, "pd-tool.exe"))  # open: no rule decides it
    listed = stack.ok("device", "list", "--tenant", "pager-d")["items"]
    pd_a = next(d["device_id"] for d in listed if d["hostname"] == "pd-a")
    stack.ok("device", "revoke", pd_a, "--tenant", "pager-d")
    wait_for(
        "pd-c's request open in the device list",
        lambda: (
            len(stack.ok("device", "list", "--tenant", "pager-d", "--offline-open")["items"]) == 1
        ),
        30.0,
    )
    data = ["--data-dir", str(stack.dev.data_dir)]
    rows, commands = follow("device", "list", "--tenant", "pager-d", "--limit", "1", *data)
    assert [(row[1], row[2], row[3]) for row in rows] == [
        ("pd-c", "True", "False"),
        ("pd-b", "False", "False"),
        ("pd-a", "False", "True"),
    ]
    assert len({row[0] for row in rows}) == 3
    assert all("--tenant pager-d --limit 1" in c for c in commands[1:])
    rows, commands = follow(
        "device", "list", "--tenant", "pager-d", "--offline-open", "--limit", "1", *data
    )
    assert [row[1] for row in rows] == ["pd-c"]
    assert all("--offline-open" in c for c in commands[1:])


def test_following_more_lines_lists_every_notification_channel_once_oldest_first(
    stack: Stack,
) -> None:
    stack.ok("tenant", "create", "pager-n", "--name", "pager-n")
    made = [
        stack.ok(
            *("notify", "channel", "add", "webhook", "--tenant", "pager-n"),
            *("--webhook-url", f"https://hooks.example.com/pager-n/{i}"),
        )["id"]
        for i in range(3)
    ]
    data = ["--data-dir", str(stack.dev.data_dir)]
    rows, commands = follow(
        "notify", "channel", "list", "--tenant", "pager-n", "--limit", "2", *data
    )
    assert [row[0] for row in rows] == made
    assert len(commands) == 2
    assert "--tenant pager-n --limit 2" in commands[1]
