"""Console sessions against a real nats-server: the token is exchanged for an HttpOnly,
SameSite=Strict cookie that works on every /v1 route, with the CSRF header on changes."""

from __future__ import annotations

import httpx
from epm_gateway.domain import new_token

from tests.integration.test_gateway_api import Gateway, assert_problem, gateway_settings, gw

__all__ = ["gateway_settings", "gw"]  # fixtures, used by name

CONSOLE = {"X-EPM-Console": "1"}


async def sign_in(gw: Gateway, token: str) -> tuple[httpx.Response, dict[str, str]]:
    r = await gw.client.post("/v1/session", json={"token": token}, headers=CONSOLE)
    cookie = r.cookies.get("epm_session")
    return r, {"Cookie": f"epm_session={cookie}"} if cookie else {}


async def test_sign_in_sets_an_httponly_strict_cookie_without_the_token(gw: Gateway) -> None:
    r, jar = await sign_in(gw, gw.admin)
    assert r.status_code == 200, r.text
    assert r.json()["role"] == "msp_admin" and r.json()["tenant"] is None
    set_cookie = r.headers["set-cookie"]
    attributes = {a.strip().lower() for a in set_cookie.split(";")}
    assert {"httponly", "samesite=strict", "path=/"} <= attributes
    assert "secure" not in attributes  # plain http; https below
    assert gw.admin not in set_cookie

    r = await gw.client.get("/v1/session", headers=jar)
    assert r.status_code == 200 and r.json()["name"] == "bootstrap admin"
    r = await gw.client.get("/v1/tenants", headers=jar)
    assert r.status_code == 200, r.text


async def test_cookie_is_secure_over_https(gw: Gateway) -> None:
    r = await gw.client.post(
        "https://gateway/v1/session", json={"token": gw.admin}, headers=CONSOLE
    )
    assert r.status_code == 200, r.text
    assert "secure" in {a.strip().lower() for a in r.headers["set-cookie"].split(";")}


async def test_changes_by_cookie_need_the_console_header(gw: Gateway) -> None:
    _, jar = await sign_in(gw, gw.admin)
    body = {"id": "acme", "name": "Acme"}
    r = await gw.client.post("/v1/tenants", json=body, headers=jar)
    assert "X-EPM-Console" in assert_problem(r, 403)["detail"]
    r = await gw.client.post("/v1/tenants", json=body, headers=jar | CONSOLE)
    assert r.status_code == 201, r.text
    # the sign-in itself needs it too (no login CSRF)
    r = await gw.client.post("/v1/session", json={"token": gw.admin})
    assert_problem(r, 403)


async def test_unknown_token_gets_no_session(gw: Gateway) -> None:
    r, jar = await sign_in(gw, new_token())
    assert_problem(r, 401)
    assert jar == {}
    assert_problem(await gw.client.get("/v1/session"), 401)


async def test_tenant_walls_hold_for_cookie_sessions(gw: Gateway) -> None:
    for t in ("acme", "globex"):
        await gw.tenant(t)
    tech = (await gw.token("tenant_technician", "acme"))["token"]
    r, jar = await sign_in(gw, tech)
    assert r.json() == {
        "name": "tenant_technician of acme",
        "role": "tenant_technician",
        "tenant": "acme",
        "expires_at": r.json()["expires_at"],
    }
    r = await gw.client.get("/v1/tenants", headers=jar)
    assert [t["id"] for t in r.json()["items"]] == ["acme"]


async def test_sign_out_ends_the_session(gw: Gateway) -> None:
    _, jar = await sign_in(gw, gw.admin)
    r = await gw.client.delete("/v1/session", headers=jar | CONSOLE)
    assert r.status_code == 204
    assert "epm_session=" in r.headers["set-cookie"]
    assert "max-age=0" in r.headers["set-cookie"].lower()
    # a copy of the old cookie is refused from now on
    body = assert_problem(await gw.client.get("/v1/tenants", headers=jar), 401)
    assert "sign in again" in body["detail"]


async def test_revoking_the_token_ends_its_sessions(gw: Gateway) -> None:
    issued = await gw.token("msp_technician", None)
    _, jar = await sign_in(gw, issued["token"])
    assert (await gw.client.get("/v1/tenants", headers=jar)).status_code == 200
    assert (await gw.delete(f"/v1/tokens/{issued['id']}")).status_code == 204
    assert_problem(await gw.client.get("/v1/tenants", headers=jar), 401)


async def test_a_tampered_cookie_is_refused(gw: Gateway) -> None:
    _, jar = await sign_in(gw, gw.admin)
    body, _, mac = jar["Cookie"].removeprefix("epm_session=").partition(".")
    forged = {"Cookie": f"epm_session={body[:-2]}xx.{mac}"}
    assert_problem(await gw.client.get("/v1/tenants", headers=forged), 401)
    assert_problem(await gw.client.get("/v1/tenants", headers={"Cookie": "epm_session=junk"}), 401)
