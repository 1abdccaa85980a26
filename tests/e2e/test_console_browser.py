"""Issue 11: the technician web console in a real browser (Debian's chromium, headless) on a
real `epm dev` stack, with requests made by `epm-agent` and checked with `epm`.

Screenshots of the main screens, desktop and phone width, go to tests/e2e/artifacts/.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Route, expect, sync_playwright

from tests.e2e.devstack import DevProcess, epm_json, wait_for
from tests.e2e.test_offline_codes_flow import run_agent
from tests.e2e.test_requests_flow import Stack, agent, exe, request, sha

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).parent / "artifacts"
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-gpu",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


class Console(Stack):
    def token(self, role: str, tenant: str | None, name: str) -> str:
        args = ["token", "issue", "--role", role, "--name", name]
        token: str = self.ok(*args, *(["--tenant", tenant] if tenant else []))["token"]
        return token

    def status_of(self, state: Path, request_id: str) -> str:
        code, out = agent(state, "status")
        assert code == 0, out
        return next((r["status"] for r in out["requests"] if r["request_id"] == request_id), "")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    tmp = tmp_path_factory.mktemp("console-e2e")
    dev = DevProcess(tmp / "data", "--port", "0", "--nats-port", "0")
    dev.start()
    try:
        console = Console(dev, dev.wait_ready(), tmp)
        for t in ("acme", "globex"):
            console.ok("tenant", "create", t, "--name", t.title())
        yield console
    finally:
        try:
            dev.stop()
        finally:
            dev.kill_everything()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail(
            "the browser tests need Debian's chromium: apt-get install -y chromium"
            " (.ci/run installs it)"
        )
    expect.set_options(timeout=20_000)
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def agents(stack: Console) -> dict[str, Path]:
    return {
        "a1": stack.enroll("acme", "a1"),
        "a2": stack.enroll("acme", "a2"),
        "b1": stack.enroll("globex", "b1"),
    }


@pytest.fixture(scope="module")
def msp(stack: Console, browser: Browser) -> Iterator[Page]:
    """An MSP technician's console, signed in once for the module."""
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    sign_in(page, stack.url, stack.token("msp_technician", None, "Tess"))
    yield page
    context.close()


def sign_in(page: Page, url: str, token: str) -> None:
    page.goto(url)
    page.get_by_label("Access token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Requests")).to_be_visible()
    expect(page.get_by_role("status").filter(has_text="Live")).to_be_visible()


def card(page: Page, name: str) -> Any:
    return page.get_by_role("article", name=name)


def choose_customer(page: Page, label: str) -> None:
    page.get_by_label("Customer", exact=True).select_option(label=label)


def shoot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


# --- the flows ------------------------------------------------------------------------------


def test_sign_in_gives_an_httponly_cookie_and_keeps_the_token_out_of_the_page(
    stack: Console, browser: Browser
) -> None:
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    token = stack.token("msp_technician", None, "Sam")
    page.goto(stack.url)
    page.get_by_label("Access token").fill("epm_not-a-real-token-at-all")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert").filter(has_text="unknown or revoked")).to_be_visible()

    sign_in(page, stack.url, token)
    expect(page.get_by_text("Sam (msp technician)")).to_be_visible()
    [cookie] = context.cookies()
    assert cookie["name"] == "epm_session" and token not in cookie["value"]
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert token not in page.url
    storage = page.evaluate("() => JSON.stringify([localStorage, sessionStorage])")
    assert storage == "[{},{}]"
    assert token not in page.content()
    assert page.evaluate("() => document.cookie") == ""  # HttpOnly: scripts cannot read it

    # Everything the console loads comes from the gateway; the service worker is at the root.
    worker = page.request.get(f"{stack.url}/sw.js")
    assert worker.ok and worker.headers["content-type"].startswith("text/javascript")
    assert page.request.get(f"{stack.url}/console/../api.py").status == 404
    policy = page.request.get(stack.url).headers["content-security-policy"]
    assert "default-src 'self'" in policy

    # A reload keeps the session; sign out ends it.
    page.reload()
    expect(page.get_by_role("heading", name="Requests")).to_be_visible()
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert context.cookies() == []
    status = page.evaluate("() => fetch('/v1/session').then(r => r.status)")
    assert status == 401
    context.close()


def test_new_request_appears_live_and_approve_once_reaches_the_agent(
    stack: Console, msp: Page, agents: dict[str, Path]
) -> None:
    editor = exe(stack.tmp, "editor.exe")
    asked = request(agents["a1"], editor, user="bob")
    assert asked["status"] == "open"
    item = card(msp, "Editor for bob")
    expect(item).to_be_visible()  # no reload: the event stream brought it
    item.get_by_text("Details").click()
    expect(item.get_by_text(sha(editor))).to_be_visible()

    for name, viewport in (("requests-desktop", DESKTOP), ("requests-phone", PHONE)):
        msp.set_viewport_size(viewport)
        shoot(msp, name)
    msp.set_viewport_size(DESKTOP)

    item.get_by_role("button", name="Approve").click()
    expect(item).to_have_count(0)
    expect(msp.get_by_role("alert").filter(has_text="Approved: Editor for bob")).to_be_visible()
    wait_for(
        "the agent to see the approval",
        lambda: stack.status_of(agents["a1"], asked["request_id"]) == "approved",
        30,
    )
    # history: the decided request is under "Approved"
    msp.get_by_label("Show").select_option("approved")
    expect(card(msp, "Editor for bob")).to_contain_text("Approved once by msp_technician:Tess")
    msp.get_by_label("Show").select_option("open")


def test_approve_for_the_customer_through_the_prefilled_rule_dialog(
    stack: Console, msp: Page, agents: dict[str, Path]
) -> None:
    tool = exe(stack.tmp, "tool.exe")
    request(agents["a1"], tool, user="carol")
    item = card(msp, "Tool for carol")
    item.get_by_label("Scope").select_option("tenant")
    item.get_by_role("button", name="Approve").click()

    dialog = msp.get_by_role("dialog", name="Approve for this customer")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_label("SHA-256")).to_have_value(sha(tool))
    expect(dialog.get_by_label("Publisher")).to_have_value("Contoso")
    expect(dialog.get_by_label("Rule name")).not_to_have_value("")
    shoot(msp, "rule-dialog-desktop")
    dialog.get_by_label("Rule name").fill("Tool for all of Acme")
    dialog.get_by_role("button", name="Create rule and approve").click()
    expect(dialog).to_be_hidden()
    expect(item).to_have_count(0)

    rules = stack.ok("rule", "list", "--tenant", "acme")["items"]
    [rule] = [r for r in rules if r["name"] == "Tool for all of Acme"]
    assert rule["effect"] == "allow" and rule["match"]["sha256"] == sha(tool)
    # the same application from another computer of acme is approved by the rule at once
    again = request(agents["a2"], tool, user="dave")
    assert again["status"] == "approved" and again["decided_by"] == f"rule:{rule['id']}"

    msp.get_by_role("button", name="Rules").click()
    expect(
        msp.get_by_role("cell", name="Tool for all of Acme", exact=True)
    ).to_be_hidden()  # all customers
    choose_customer(msp, "Acme (acme)")
    expect(msp.get_by_role("cell", name="Tool for all of Acme", exact=True)).to_be_visible()
    shoot(msp, "rules-desktop")
    choose_customer(msp, "All customers")
    msp.get_by_role("button", name="Requests").click()


def test_a_decision_made_elsewhere_first_is_shown_as_a_conflict(
    stack: Console, msp: Page, agents: dict[str, Path]
) -> None:
    other = stack.token("tenant_technician", "acme", "Otto")
    game = exe(stack.tmp, "game.exe")
    asked = request(agents["a1"], game, user="erin")
    item = card(msp, "Game for erin")
    item.get_by_label("Scope").select_option("tenant")
    item.get_by_role("button", name="Deny").click()
    dialog = msp.get_by_role("dialog", name="Deny for this customer")
    expect(dialog).to_be_visible()

    # while the dialog is open, another technician decides
    code, out = epm_json(
        "request", "decide", asked["request_id"], "--approve", "--scope", "once",
        "--token", other, "--url", stack.url,
    )  # fmt: skip
    assert code == 0, out
    expect(item).to_have_count(0)  # the list behind the dialog follows live

    dialog.get_by_role("button", name="Create rule and deny").click()
    expect(dialog).to_be_hidden()
    expect(msp.get_by_role("alert").filter(has_text="Someone else decided first")).to_be_visible()
    assert not [
        r for r in stack.ok("rule", "list", "--tenant", "acme")["items"] if "Game" in r["name"]
    ]


def test_msp_switcher_shows_all_customers_or_one(
    stack: Console, msp: Page, agents: dict[str, Path]
) -> None:
    request(agents["a1"], exe(stack.tmp, "paint.exe"), user="fay")
    request(agents["b1"], exe(stack.tmp, "chart.exe"), user="gus")
    expect(card(msp, "Paint for fay")).to_contain_text("acme")
    expect(card(msp, "Chart for gus")).to_contain_text("globex")
    choose_customer(msp, "Globex (globex)")
    expect(card(msp, "Chart for gus")).to_be_visible()
    expect(card(msp, "Paint for fay")).to_have_count(0)
    choose_customer(msp, "All customers")
    expect(card(msp, "Paint for fay")).to_be_visible()


def test_tenant_technician_sees_only_its_customer(
    stack: Console, browser: Browser, agents: dict[str, Path]
) -> None:
    context: BrowserContext = browser.new_context(viewport=PHONE)
    page = context.new_page()
    sign_in(page, stack.url, stack.token("tenant_technician", "globex", "Gina"))
    expect(page.get_by_text("Customer: globex")).to_be_visible()
    expect(page.get_by_label("Customer", exact=True)).to_be_hidden()
    expect(card(page, "Chart for gus")).to_be_visible()
    expect(card(page, "Paint for fay")).to_have_count(0)
    chart = card(page, "Chart for gus")
    expect(chart.get_by_role("option", name="For all customers (rule)")).to_have_count(0)
    hidden = page.evaluate("() => fetch('/v1/tenants/acme/requests').then(r => r.status)")
    assert hidden == 404
    shoot(page, "requests-tenant-phone")
    context.close()


def test_offline_help_desk_answer_is_accepted_by_the_agent(
    stack: Console, msp: Page, agents: dict[str, Path]
) -> None:
    tool = exe(stack.tmp, "offline-tool.exe")
    computer = agents["a2"]
    code, asked = agent(computer, "offline", "request-code", "--exe", str(tool), "--offline")
    assert code == 0, asked

    msp.get_by_role("button", name="Offline help desk").click()
    expect(msp.get_by_text("Choose a customer above")).to_be_visible()
    choose_customer(msp, "Acme (acme)")
    helpdesk = msp.get_by_role("form", name="Answer a request code")
    helpdesk.get_by_label("Search computers").fill("a2")
    expect(helpdesk.get_by_label("Computer", exact=True)).to_have_value(device_id(stack, "a2"))
    helpdesk.get_by_label("Request code").fill(asked["request_code"])
    helpdesk.get_by_label("This application").check()
    helpdesk.get_by_label("Application SHA-256").fill(sha(tool))
    helpdesk.get_by_role("button", name="Get response code").click()
    output = helpdesk.get_by_label("Response code", exact=True)
    expect(output).to_have_text(re.compile(r"^[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4}$"))
    shoot(msp, "offline-desktop")
    msp.set_viewport_size(PHONE)
    shoot(msp, "offline-phone")
    msp.set_viewport_size(DESKTOP)

    code, granted = agent(computer, "offline", "respond", output.inner_text(), "--offline")
    assert code == 0, granted
    assert granted["granted"] is True and granted["grant"] == "app"

    # offline access codes, shown once
    msp.get_by_role("button", name="Issue codes").click()
    codes = msp.get_by_role("list", name="Offline access codes").get_by_role("listitem")
    expect(codes).to_have_count(1)

    # the user mistypes response codes until the computer locks; the help desk lifts it
    agent(computer, "offline", "request-code", "--exe", str(tool), "--offline")
    clock = datetime.now(UTC)
    for _ in range(10):
        clock += timedelta(seconds=10)  # past the retry delay each wrong code starts
        _, wrong = run_agent(computer, clock, "offline", "respond", "0000-0000-0000", "--offline")
        if wrong.get("reason") == "locked":
            break
    assert wrong.get("reason") == "locked", wrong
    lift = msp.get_by_role("form", name="Lift a lockout")
    lift.get_by_label("Reason (kept in the audit trail)").fill("user mistyped")
    lift.get_by_role("button", name="Lift lockout").click()
    expect(msp.get_by_text("Lockout lifted")).to_be_visible()
    wait_for(
        "the lift to reach a2",
        lambda: "locked_until" not in agent(computer, "status")[1],
        30.0,
    )
    choose_customer(msp, "All customers")
    msp.get_by_role("button", name="Requests").click()


def test_offline_help_desk_searches_the_computers_of_every_page(
    stack: Console, browser: Browser, agents: dict[str, Path]
) -> None:
    """The device list comes a page at a time: the help desk follows next_cursor (here the
    real first page is given a cursor, and the next page is one made-up computer)."""
    asked: list[dict[str, list[str]]] = []

    def devices(route: Route) -> None:
        query = parse_qs(urlsplit(route.request.url).query)
        asked.append(query)
        if "cursor" not in query:
            first = route.fetch()
            route.fulfill(response=first, json={**first.json(), "next_cursor": "bmV4dA"})
            return
        beyond = {"id": "d-beyond", "device_id": "d-beyond", "tenant": "acme"}
        beyond |= {"hostname": "beyond-page-one", "revoked": False, "offline_open": False}
        route.fulfill(json={"items": [beyond]})

    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    page.route(re.compile(r"/v1/tenants/acme/devices\?"), devices)
    sign_in(page, stack.url, stack.token("msp_technician", None, "Pia"))
    page.get_by_role("button", name="Offline help desk").click()
    choose_customer(page, "Acme (acme)")
    helpdesk = page.get_by_role("form", name="Answer a request code")
    helpdesk.get_by_label("Search computers").fill("beyond")
    expect(helpdesk.get_by_label("Computer", exact=True)).to_have_value("d-beyond")
    helpdesk.get_by_label("Search computers").fill("a1")
    expect(helpdesk.get_by_label("Computer", exact=True)).to_have_value(device_id(stack, "a1"))
    assert asked[:2] == [{"limit": ["500"]}, {"limit": ["500"], "cursor": ["bmV4dA"]}]
    context.close()


def device_id(stack: Console, hostname: str) -> str:
    devices = stack.ok("device", "list", "--tenant", "acme")["items"]
    found: str = next(d["device_id"] for d in devices if d["hostname"] == hostname)
    return found
