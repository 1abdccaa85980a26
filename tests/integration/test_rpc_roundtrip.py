"""Commands over NATS request/reply: results, structured errors, unknown commands, no service."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from epm_events.ids import validate_tenant
from epm_service import rpc
from epm_service.bus import Bus
from epm_service.errors import CommandError, Conflict, Invalid, NotFound, Unavailable
from epm_service.principal import Principal
from epm_service.rpc import RpcServer

TECH = Principal(token_id="tok-1", name="alice", role="tenant_technician", tenant="acme")
released = asyncio.Event()


async def echo(args: dict[str, Any], who: Principal) -> Any:
    return {"args": args, "by": who.actor, "tenant": who.tenant}


async def decide(args: dict[str, Any], who: Principal) -> Any:
    raise Conflict(
        f"request {args['request_id']} was already approved", extra={"decided_by": "bob"}
    )


async def rename(args: dict[str, Any], who: Principal) -> Any:
    return validate_tenant(args["tenant"])


async def crash(args: dict[str, Any], who: Principal) -> Any:
    raise ZeroDivisionError("division by zero")


async def hang(args: dict[str, Any], who: Principal) -> Any:
    await released.wait()
    return None


COMMANDS = {"echo": echo, "decide": decide, "rename": rename, "crash": crash, "hang": hang}


@pytest.fixture
async def server(bus: Bus) -> AsyncIterator[RpcServer]:
    srv = RpcServer(bus.nc, "approval", COMMANDS)
    await srv.start()
    yield srv
    released.set()
    await srv.stop()


async def test_a_command_answers_with_its_result(bus: Bus, server: RpcServer) -> None:
    result = await rpc.call(bus.nc, "approval", "echo", {"x": 1}, TECH)
    assert result == {"args": {"x": 1}, "by": "tenant_technician:alice", "tenant": "acme"}


async def test_a_command_error_comes_back_as_the_same_structured_error(
    bus: Bus, server: RpcServer
) -> None:
    with pytest.raises(Conflict) as err:
        await rpc.call(bus.nc, "approval", "decide", {"request_id": "req-1"}, TECH)
    assert err.value.status == 409
    assert err.value.title == "Conflict"
    assert err.value.detail == "request req-1 was already approved"
    assert err.value.extra == {"decided_by": "bob"}
    assert err.value.to_dict()["decided_by"] == "bob"


async def test_an_invalid_id_is_refused_as_invalid_input(bus: Bus, server: RpcServer) -> None:
    with pytest.raises(Invalid) as err:
        await rpc.call(bus.nc, "approval", "rename", {"tenant": "Acme.Corp"}, TECH)
    assert err.value.status == 422
    assert "lowercase letters" in err.value.detail


async def test_an_unknown_command_is_404(bus: Bus, server: RpcServer) -> None:
    with pytest.raises(NotFound) as err:
        await rpc.call(bus.nc, "approval", "fly", {}, TECH)
    assert err.value.status == 404
    assert "'fly'" in err.value.detail


async def test_an_unexpected_failure_is_500_and_the_server_keeps_answering(
    bus: Bus, server: RpcServer
) -> None:
    with pytest.raises(CommandError) as err:
        await rpc.call(bus.nc, "approval", "crash", {}, TECH)
    assert err.value.status == 500
    assert await rpc.call(bus.nc, "approval", "echo", {}, TECH)


async def test_a_request_without_a_principal_is_refused_as_invalid(
    bus: Bus, server: RpcServer
) -> None:
    msg = await bus.nc.request("epm.rpc.approval.echo", b'{"args": {}}', timeout=5)
    assert b'"status":422' in msg.data


async def test_no_running_service_is_unavailable_with_what_to_do(bus: Bus) -> None:
    with pytest.raises(Unavailable) as err:
        await rpc.call(bus.nc, "nobody-home", "echo", {}, TECH)
    assert err.value.status == 503
    assert "not running" in err.value.detail


async def test_a_service_that_does_not_answer_in_time_is_unavailable(
    bus: Bus, server: RpcServer
) -> None:
    released.clear()
    with pytest.raises(Unavailable, match="did not answer within"):
        await rpc.call(bus.nc, "approval", "hang", {}, TECH, timeout=0.2)
    released.set()


async def test_a_slow_command_does_not_block_the_next(bus: Bus, server: RpcServer) -> None:
    released.clear()
    slow = asyncio.create_task(rpc.call(bus.nc, "approval", "hang", {}, TECH))
    assert await rpc.call(bus.nc, "approval", "echo", {"n": 2}, TECH)
    assert not slow.done()
    released.set()
    assert await slow is None


async def test_concurrent_calls_each_get_their_own_reply_and_a_late_one_is_dropped(
    bus: Bus, server: RpcServer
) -> None:
    """Calls share one reply subscription per connection (rpc.Caller): each reply reaches
    its own caller, a reply to a call that gave up is dropped, and nothing is kept."""
    results = await asyncio.gather(
        *(rpc.call(bus.nc, "approval", "echo", {"n": n}, TECH) for n in range(50))
    )
    assert [r["args"]["n"] for r in results] == list(range(50))
    released.clear()
    with pytest.raises(Unavailable):
        await rpc.call(bus.nc, "approval", "hang", {}, TECH, timeout=0.2)
    released.set()  # its reply comes now, to nobody
    assert (await rpc.call(bus.nc, "approval", "echo", {"n": 99}, TECH))["args"] == {"n": 99}
    caller = rpc._caller(bus.nc)
    assert caller._sub is not None and not caller._waiting
