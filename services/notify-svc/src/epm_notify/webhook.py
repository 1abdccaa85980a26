"""Webhook adapter: one signed POST per try, short timeouts, public addresses only.

aiohttp rather than httpx: on this machine an httpx POST cost about ten times
the CPU of an aiohttp one (2.6 ms against 0.28 ms, receiver included), which
under load is the difference between keeping up with 100 requests/s and not.

Unless EPM_NOTIFY_ALLOW_PRIVATE_WEBHOOKS is set, a try never connects to a
non-public address (epm_notify.addresses): a URL whose host is such an address
is refused before the request, and a host name is resolved by PublicOnlyResolver,
which refuses the name when any of its addresses is not public. aiohttp connects
only to the addresses its resolver returned (and caches them), so what was
checked is what is connected to: a name re-pointed after the check (DNS
rebinding) is checked again when it is resolved again. Proxies from the
environment are not used (the session does not trust_env), redirects not followed.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from epm_notify.addresses import (
    literal_refusal,
    parse_address,
    refused_delivery,
    refused_kind,
    unresolved_delivery,
)
from epm_notify.retry import NotDelivered, Outcome, outcome_of_status
from epm_notify.signing import signed_headers

log = logging.getLogger(__name__)

USER_AGENT = "EPM-notify/1"


class NonPublicAddress(OSError):
    """A host resolved to an address notify-svc does not send to. An OSError, so aiohttp
    reports it as a connection failure (ClientConnectorError.os_error) without connecting."""


class PublicOnlyResolver(AbstractResolver):
    """Resolves as ``inner`` does (the system resolver by default) and refuses a host when
    any of its addresses is not public: a name with one private address among public ones
    could otherwise be tried on the private one."""

    def __init__(self, inner: AbstractResolver | None = None, allow_private: bool = False) -> None:
        self.inner = inner if inner is not None else DefaultResolver()
        self.allow_private = allow_private  # then only link-local is refused (refused_kind)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self.inner.resolve(host, port, family)
        for r in found:
            ip = parse_address(r["host"])
            kind = "unreadable" if ip is None else refused_kind(ip, self.allow_private)
            if kind is not None:
                # the operator's log says which address; the delivery's reason does not
                log.warning(
                    "refused a host that resolves to a non-public address",
                    extra={"host": host, "address": r["host"], "address_kind": kind},
                )
                raise NonPublicAddress(f"{host} resolves to a non-public address")
        return found

    async def close(self) -> None:
        await self.inner.close()


class WebhookSender:
    def __init__(self, session: aiohttp.ClientSession, *, allow_private: bool = False) -> None:
        self.session = session
        self.allow_private = allow_private

    async def send(
        self, target: dict[str, Any], secret: str | None, notification_id: str, payload: bytes
    ) -> Outcome:
        if not secret:
            return NotDelivered("webhook channel has no signing secret", permanent=True)
        headers = signed_headers(secret, notification_id, int(time.time()), payload)
        headers["content-type"] = "application/cloudevents+json"
        headers["user-agent"] = USER_AGENT
        return await post(
            self.session,
            target["url"],
            payload,
            headers,
            "webhook",
            allow_private=self.allow_private,
        )


async def post(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    what: str,
    *,
    allow_private: bool = False,
) -> Outcome:
    """One POST. With ``allow_private`` off the session must resolve names with
    PublicOnlyResolver (HttpClient does); an address written in the URL is checked here,
    as aiohttp connects to it without asking the resolver."""
    try:
        target = URL(url)  # parsed once, as aiohttp parses it, so the host checked is the one used
    except ValueError:
        return NotDelivered(f"{what} URL is not valid", permanent=True)
    why = literal_refusal(target.host or "", allow_private)
    if why is not None:
        return NotDelivered(refused_delivery(what, f"its host is {why}"), permanent=True)
    try:
        async with session.post(target, data=body, headers=headers, allow_redirects=False) as resp:
            status = resp.status
    except TimeoutError:
        return NotDelivered(f"{what} timed out")
    except aiohttp.ClientConnectorError as exc:
        if isinstance(exc.os_error, NonPublicAddress) or (
            not allow_private and isinstance(exc, aiohttp.ClientConnectorDNSError)
        ):
            # One answer for both, tried again as any unreachable host is: a name that
            # resolves to a private address must look like one that does not resolve.
            return NotDelivered(unresolved_delivery(what))
        return NotDelivered(f"{what} unreachable ({type(exc).__name__})")
    except (aiohttp.ClientError, OSError) as exc:
        return NotDelivered(f"{what} unreachable ({type(exc).__name__})")
    return outcome_of_status(status, what)
