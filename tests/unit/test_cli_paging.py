"""``epm`` list commands page: --limit and --cursor reach the API, and in text mode a last
``more:`` line repeats the command as given, at the next page (a fake gateway answers)."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from epm_cli.main import app
from epm_cli.technician.api import Api
from typer.testing import CliRunner

# --url from the environment (as EPM_URL) is not part of what was typed
ENV = {"EPM_URL": "http://gateway.test", "EPM_TOKEN": "env-secret", "COLUMNS": "200"}

Answer = Callable[[str], dict[str, Any]]


class FakeGateway:
    """Records the paths asked for and answers each with ``answer(path)``."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.paths: list[str] = []

    def call(self, method: str, path: str, body: object | None = None) -> Any:
        assert method == "GET"
        self.paths.append(path)
        return self.answer(path)

    def query(self, index: int = -1) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.paths[index]).query)


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> Callable[[Answer], FakeGateway]:
    def install(answer: Answer) -> FakeGateway:
        fake = FakeGateway(answer)
        monkeypatch.setattr(Api, "call", lambda _self, *a, **kw: fake.call(*a, **kw))
        return fake

    return install


def run(*args: str) -> tuple[int, str]:
    done = CliRunner().invoke(app, list(args), env=ENV)
    return done.exit_code, done.stdout


def more_line(out: str) -> list[str]:
    """The ``more:`` hint as argv, the program name left out."""
    last = out.rstrip("\n").splitlines()[-1]
    assert last.startswith("more: epm "), out
    return shlex.split(last.removeprefix("more: epm "))


def request_page(cursor: str | None) -> Answer:
    def answer(path: str) -> dict[str, Any]:
        items = [{"id": "req-1", "tenant": "globex", "user": "bob", "status": "open"}]
        return {"items": items, **({"next_cursor": cursor} if cursor else {})}

    return answer


def test_request_list_passes_limit_and_cursor_to_the_tenant_view(
    gateway: Callable[[Answer], FakeGateway],
) -> None:
    fake = gateway(request_page(None))
    code, _ = run("request", "list", "--tenant", "globex", "--limit", "50", "--cursor", "300")
    assert code == 0
    assert fake.paths[0].startswith("/v1/tenants/globex/requests?")
    assert fake.query() == {"status": ["open"], "limit": ["50"], "cursor": ["300"]}


def test_without_limit_or_cursor_the_server_defaults_apply(
    gateway: Callable[[Answer], FakeGateway],
) -> None:
    fake = gateway(request_page(None))
    assert run("request", "list")[0] == 0
    assert fake.query() == {"status": ["open"]}


def test_a_next_page_is_announced_with_the_command_that_continues_the_same_listing(
    gateway: Callable[[Answer], FakeGateway],
) -> None:
    gateway(request_page("329"))
    code, out = run("request", "list", "--tenant", "globex", "--status", "all", "--limit", "100")
    assert code == 0
    assert more_line(out) == [
        *("request", "list", "--tenant", "globex", "--status", "all", "--limit", "100"),
        *("--cursor", "329"),
    ]


def test_running_the_more_line_asks_for_the_next_page_with_the_same_filters(
    gateway: Callable[[Answer], FakeGateway],
) -> None:
    fake = gateway(request_page("329"))
    _, out = run("request", "list", "--tenant", "globex", "--limit", "100")
    _, again = run(*more_line(out))
    assert fake.paths[1].startswith("/v1/tenants/globex/requests?")
    assert fake.query(1) == {"status": ["open"], "limit": ["100"], "cursor": ["329"]}
    assert more_line(again) == more_line(out)  # the cursor replaced, not repeated


def test_the_last_page_has_no_more_line(gateway: Callable[[Answer], FakeGateway]) -> None:
    gateway(request_page(None))
    _, out = run("request", "list", "--tenant", "globex", "--cursor", "329")
    assert "more:" not in out


def test_json_output_stays_the_endpoints_answer(gateway: Callable[[Answer], FakeGateway]) -> None:
    gateway(request_page("329"))
    code, out = run("request", "list", "--tenant", "globex", "--json")
    assert code == 0
    assert orjson.loads(out)["next_cursor"] == "329"
    assert len(out.strip().splitlines()) == 1


def test_tenant_list_pages(gateway: Callable[[Answer], FakeGateway]) -> None:
    fake = gateway(lambda _: {"items": [{"id": "acme", "name": "Acme"}], "next_cursor": "YWNtZQ"})
    code, out = run("tenant", "list", "--limit", "1")
    assert code == 0
    assert fake.query() == {"limit": ["1"]}
    assert more_line(out) == ["tenant", "list", "--limit", "1", "--cursor", "YWNtZQ"]


def audit_page(path: str) -> dict[str, Any]:
    record = {
        "seq": 7,
        "tenant": "globex",
        "type": "Approved",
        "actor": {"kind": "technician", "id": "ann"},
        "received_at": "2025-03-01T00:00:00Z",
    }
    return {"items": [record], "next_cursor": "YXVkaXQ6Nw"}


def test_the_audit_more_line_keeps_tenant_type_limit_and_time_filters(
    gateway: Callable[[Answer], FakeGateway],
) -> None:
    fake = gateway(audit_page)
    args = ["audit", "list", "--tenant", "globex", "--type", "Approved"]
    code, out = run(*args, "--limit", "5", "--since", "2025-03-01T00:00:00Z")
    assert code == 0
    assert more_line(out) == [
        *args,
        *("--since", "2025-03-01T00:00:00Z", "--limit", "5", "--cursor", "YXVkaXQ6Nw"),
    ]
    run(*more_line(out))
    assert fake.query(1) == {
        "tenant": ["globex"],
        "type": ["Approved"],
        "since": ["2025-03-01T00:00:00Z"],
        "limit": ["5"],
        "cursor": ["YXVkaXQ6Nw"],
    }


def test_the_more_line_repeats_where_but_never_the_token_itself(
    gateway: Callable[[Answer], FakeGateway],
) -> None:
    gateway(request_page("12"))
    _, out = run(
        *("request", "list", "--url", "http://other.test", "--token", "s3cret-token"),
        *("--data-dir", "/srv/epm data"),
    )
    assert "s3cret-token" not in out
    assert more_line(out) == [
        *("request", "list", "--url", "http://other.test", "--token", "TOKEN"),
        *("--data-dir", "/srv/epm data", "--cursor", "12"),
    ]


def test_options_from_the_environment_are_not_repeated(
    gateway: Callable[[Answer], FakeGateway],
) -> None:
    gateway(request_page("12"))
    _, out = run("request", "list")
    assert more_line(out) == ["request", "list", "--cursor", "12"]
    assert "env-secret" not in out


def test_a_limit_beyond_the_endpoints_page_is_a_usage_error() -> None:
    done = CliRunner().invoke(app, ["request", "list", "--limit", "201"], env=ENV)
    assert done.exit_code == 2


def test_rule_list_pages_with_a_more_line_like_the_others(
    gateway: Callable[[Answer], FakeGateway],
) -> None:
    rule = {"id": "rule-1", "name": "7-Zip", "effect": "allow", "enabled": True, "match": {}}
    fake = gateway(lambda _: {"items": [rule], "next_cursor": "100"})
    code, out = run("rule", "list", "--tenant", "acme", "--limit", "1")
    assert code == 0
    assert fake.paths[-1].startswith("/v1/tenants/acme/rules?")
    assert fake.query() == {"limit": ["1"]}
    hint = more_line(out)
    assert hint == ["rule", "list", "--tenant", "acme", "--limit", "1", "--cursor", "100"]
    run(*hint)
    assert fake.query() == {"limit": ["1"], "cursor": ["100"]}


def device_page(path: str) -> dict[str, Any]:
    device = {"device_id": "d-1", "hostname": "pc-1", "offline_open": True, "revoked": False}
    return {"items": [device], "next_cursor": "ZGV2aWNlczpb"}


def test_device_list_pages_and_its_more_line_keeps_the_offline_filter(
    gateway: Callable[[Answer], FakeGateway],
) -> None:
    fake = gateway(device_page)
    args = ["device", "list", "--tenant", "acme", "--offline-open", "--limit", "1"]
    code, out = run(*args)
    assert code == 0
    assert fake.paths[0].startswith("/v1/tenants/acme/devices?")
    assert fake.query() == {"offline": ["open"], "limit": ["1"]}
    hint = more_line(out)
    assert hint == [*args, "--cursor", "ZGV2aWNlczpb"]
    run(*hint)
    assert fake.query() == {"offline": ["open"], "limit": ["1"], "cursor": ["ZGV2aWNlczpb"]}


def test_device_list_without_paging_options_asks_for_the_whole_first_page(
    gateway: Callable[[Answer], FakeGateway],
) -> None:
    fake = gateway(lambda _: {"items": []})
    code, out = run("device", "list", "--tenant", "acme")
    assert code == 0
    assert fake.paths == ["/v1/tenants/acme/devices"]
    assert out.strip() == "no devices enrolled" and "more:" not in out
    _, out = run("device", "list", "--tenant", "acme", "--cursor", "ZGV2aWNlczpb")
    assert out.strip() == "no more devices"  # the end of a listing, not an empty tenant


def channel_page(path: str) -> dict[str, Any]:
    channel = {"id": "ch-1", "kind": "webhook", "url": "https://hooks.example.com/a"}
    return {"items": [channel], "next_cursor": "Y2hhbm5lbHM6Ww"}


@pytest.mark.parametrize(
    ("tenant", "base"),
    [
        (["--tenant", "acme"], "/v1/tenants/acme/notification-channels"),
        ([], "/v1/notification-channels"),
    ],
)
def test_notify_channel_list_pages_with_a_more_line_like_the_others(
    gateway: Callable[[Answer], FakeGateway], tenant: list[str], base: str
) -> None:
    fake = gateway(channel_page)
    args = ["notify", "channel", "list", *tenant, "--limit", "2"]
    code, out = run(*args)
    assert code == 0
    assert fake.paths[0] == f"{base}?limit=2"
    assert "https://hooks.example.com/a" in out
    hint = more_line(out)
    assert hint == [*args, "--cursor", "Y2hhbm5lbHM6Ww"]
    run(*hint)
    assert fake.paths[1].startswith(f"{base}?")
    assert fake.query(1) == {"limit": ["2"], "cursor": ["Y2hhbm5lbHM6Ww"]}


@pytest.mark.parametrize(
    "command", [["device", "list", "--tenant", "acme"], ["notify", "channel", "list"]]
)
def test_device_and_channel_lists_take_at_most_500_a_page(command: list[str]) -> None:
    done = CliRunner().invoke(app, [*command, "--limit", "501"], env=ENV)
    assert done.exit_code == 2
