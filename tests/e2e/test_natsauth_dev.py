"""``epm dev`` with NATS auth, end to end: no anonymous clients, an agent gets its own user at
enrollment and loses it when revoked, an integrator reads its tenant only and loses its
creds with its token, and no EPM process is ever refused by NATS while the stack works."""

from __future__ import annotations

import asyncio
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import nats.errors
import pytest
from epm_cli.services import SERVICES
from nats.aio.client import RawCredentials
from nats.js.api import ConsumerConfig

from tests.e2e.devstack import DevProcess, epm_json, wait_for
from tests.e2e.test_requests_flow import Stack, agent, exe, request


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("natsauth-e2e")
    dev = DevProcess(tmp / "data", "--port", "0", "--nats-port", "0")
    dev.start()
    try:
        yield Stack(dev, dev.wait_ready(), tmp)
    finally:
        try:
            dev.stop()
        finally:
            dev.kill_everything()


async def _quiet(exc: Exception) -> None:
    """Refusals are what these tests look for."""


def refused(url: str, **options: Any) -> bool:
    async def attempt() -> bool:
        try:
            nc = await nats.connect(
                url, allow_reconnect=False, connect_timeout=3, error_cb=_quiet, **options
            )
        except (nats.errors.Error, TimeoutError, OSError):
            return True
        connected = nc.is_connected
        await nc.close()
        return not connected

    return asyncio.run(attempt())


def test_the_nats_keys_and_creds_are_private_files_of_the_data_dir(stack: Stack) -> None:
    auth = stack.dev.data_dir / "nats-auth"
    assert stat.S_IMODE(auth.stat().st_mode) == 0o700
    names = {p.name for p in auth.iterdir()}
    assert {"keys.json", "resolver.conf", "admin.creds"} <= names
    assert {f"{name}.creds" for name in SERVICES} <= names
    for path in auth.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_an_anonymous_client_is_refused(stack: Stack) -> None:
    assert refused(stack.nats)


def test_an_agent_gets_its_own_user_and_loses_it_when_revoked(stack: Stack) -> None:
    stack.ok("tenant", "create", "acme", "--name", "Acme")
    kept = stack.enroll("acme", "kept")
    gone = stack.enroll("acme", "gone")
    creds = gone / "nats.creds"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    assert creds.read_text() != (kept / "nats.creds").read_text()
    assert request(gone, exe(stack.tmp, "tool.exe"))["status"] == "open"
    assert agent(gone, "status")[1]["online"] is True

    device = agent(gone, "status")[1]["device_id"]
    stack.ok("device", "revoke", device, "--tenant", "acme")
    assert refused(stack.nats, user_credentials=str(creds))
    code, out = agent(gone, "status")  # told why, not "offline"
    assert code == 1 and "NATS credentials were refused" in out["error"], out
    assert "revoked" in out["error"] and "--state-dir <new dir>" in out["error"]
    assert agent(kept, "status")[1]["online"] is True


def test_an_integrator_reads_its_tenant_and_is_refused_another(stack: Stack) -> None:
    stack.ok("tenant", "create", "initech", "--name", "Initech")
    stack.ok("tenant", "create", "hooli", "--name", "Hooli")
    code, issued = epm_json(
        "token", "issue", "--role", "integrator", "--tenant", "initech", "--name", "crm",
        "--url", stack.url, "--token", (stack.dev.data_dir / "admin-token").read_text().strip(),
    )  # fmt: skip
    assert code == 0, issued
    answer = httpx.get(
        f"{stack.url}/v1/integrations/nats",
        headers={"Authorization": f"Bearer {issued['token']}"},
        timeout=10,
    ).json()
    assert answer["subjects"] == ["epm.evt.initech.>"]

    async def read() -> tuple[str, list[str]]:
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc).lower())

        nc = await nats.connect(
            answer["url"],
            user_credentials=RawCredentials(answer["creds"]),
            inbox_prefix=answer["inbox_prefix"],
            error_cb=on_error,
        )
        try:
            js = nc.jetstream(timeout=2)
            feed = await js.subscribe(
                "epm.evt.initech.>",
                stream=answer["stream"],
                ordered_consumer=True,
                config=ConsumerConfig(name="crm"),
            )
            first = (await feed.next_msg(timeout=10)).subject
            with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
                await js.subscribe(
                    "epm.evt.hooli.>",
                    stream=answer["stream"],
                    ordered_consumer=True,
                    config=ConsumerConfig(name="peek"),
                )
            await nc.flush()
            return first, errors
        finally:
            await nc.close()

    first, errors = asyncio.run(read())
    assert first.startswith("epm.evt.initech.")
    assert any("permissions violation" in e and "epm.evt.hooli" in e for e in errors), errors

    creds = stack.tmp / "crm.creds"
    creds.write_text(answer["creds"])
    stack.ok("token", "revoke", issued["id"])  # its NATS user goes with it, at once
    assert refused(answer["url"], user_credentials=str(creds))


def test_no_epm_process_was_refused_by_nats(stack: Stack) -> None:
    """Every refusal in the server's log is a device's or an integrator's, never a service's:
    the grants of epm_service.natsauth cover what the stack did in this module."""
    log = Path(stack.dev.data_dir / "logs" / "nats.log").read_text()
    violations = [line for line in log.splitlines() if "Violation" in line]
    assert violations  # the refusals of the tests above are there
    services = "|".join(re.escape(name) for name in SERVICES)
    by_services = [v for v in violations if re.search(rf':python3:({services})"', v)]
    assert not by_services, by_services


def test_a_device_of_the_stack_cannot_listen_on_another_devices_inbox(stack: Stack) -> None:
    stack.ok("tenant", "create", "umbrella", "--name", "Umbrella")
    mine = stack.enroll("umbrella", "mine")
    theirs = agent(stack.enroll("umbrella", "theirs"), "status")[1]["device_id"]

    async def listen() -> list[str]:
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc).lower())

        me = agent(mine, "status")[1]["device_id"]
        nc = await nats.connect(
            stack.nats,
            user_credentials=str(mine / "nats.creds"),
            inbox_prefix=f"_INBOX.umbrella.{me}",
            error_cb=on_error,
        )
        try:
            await nc.subscribe(f"_INBOX.umbrella.{theirs}.>")
            for _ in range(50):
                await nc.flush()
                if errors:
                    break
                await asyncio.sleep(0.05)
            return errors
        finally:
            await nc.close()

    errors = wait_for("the server to refuse", lambda: asyncio.run(listen()), 30)
    assert any("permissions violation for subscription" in e for e in errors)
