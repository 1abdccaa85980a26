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
