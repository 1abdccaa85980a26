"""notify-svc sends only to public addresses unless EPM_NOTIFY_ALLOW_PRIVATE_WEBHOOKS is set,
and takes e-mail channels only with EPM_SMTP_URL: the pure checks and the resolver guard."""

from __future__ import annotations

import base64
import secrets
import socket
from ipaddress import ip_address

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from epm_notify.addresses import ALLOW_SETTING, literal_refusal, non_public
from epm_notify.channels import Rules, new_channel
from epm_notify.webhook import NonPublicAddress, PublicOnlyResolver
from epm_service.errors import Invalid

STRICT = Rules(allow_private_hosts=False, smtp_configured=True)
LAB = Rules(allow_private_hosts=True, smtp_configured=True)

PRIVATE_URLS = [
    "http://127.0.0.1:8080/hook",
    "http://127.0.0.2/hook",
    "http://localhost:9000/hook",
    "http://LOCALHOST./hook",
    "http://api.localhost/hook",
    "http://[::1]:8080/hook",
    "http://10.1.2.3/hook",
    "http://172.16.0.1/hook",
    "http://192.168.1.1/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fe80::1%25eth0]/hook",
    "http://[fd00::1]/hook",
    "http://100.64.0.1/hook",
    "http://0.0.0.0:8080/hook",
    "http://[::]/hook",
    "http://224.0.0.1/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[::ffff:10.0.0.1]/hook",
    "http://2130706433/hook",  # 127.0.0.1 as the C library reads it
    "http://0x7f000001/hook",
    "http://127.1/hook",
]


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def subscription(endpoint: str) -> dict[str, object]:
    key = ec.generate_private_key(ec.SECP256R1())
    point = key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    return {
        "endpoint": endpoint,
        "keys": {"p256dh": b64url(point), "auth": b64url(secrets.token_bytes(16))},
    }


@pytest.mark.parametrize("url", PRIVATE_URLS)
def test_a_webhook_to_a_loopback_private_or_link_local_host_is_refused_naming_the_setting(
    url: str,
) -> None:
    with pytest.raises(Invalid) as err:
        new_channel({"kind": "webhook", "url": url}, STRICT)
    assert err.value.status == 422
    detail = err.value.detail
    assert url in detail and f"{ALLOW_SETTING}=true" in detail
    assert "public addresses" in detail


def test_the_refusal_says_what_kind_of_address_it_is() -> None:
    cases = {
        "http://169.254.169.254/": "a link-local address (169.254.169.254)",
        "http://127.0.0.1:1/": "a loopback address (127.0.0.1)",
        "http://10.0.0.7/": "a private address (10.0.0.7)",
        "http://localhost/": "localhost (this machine: loopback)",
        "http://0x7f000001/": "a loopback address (0x7f000001 = 127.0.0.1)",
    }
    for url, why in cases.items():
        with pytest.raises(Invalid) as err:
            new_channel({"kind": "webhook", "url": url}, STRICT)
        assert f"points at {why}" in err.value.detail, err.value.detail


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/epm",
        "https://8.8.8.8/hook",
        "https://[2001:4860:4860::8888]/hook",
        "http://h/x",  # a name: checked when it is resolved, at delivery
        "https://localhost.example.com/hook",
    ],
)
def test_public_addresses_and_host_names_are_accepted(url: str) -> None:
    assert new_channel({"kind": "webhook", "url": url}, STRICT).target == {"url": url}


LINK_LOCAL_URLS = [
    "http://169.254.169.254/latest/meta-data/",
    "http://[fe80::1%25eth0]/hook",
    "http://[::ffff:169.254.169.254]/hook",
]


@pytest.mark.parametrize("url", [u for u in PRIVATE_URLS if u not in LINK_LOCAL_URLS])
def test_the_setting_allows_private_hosts_for_a_lab_or_a_developer_machine(url: str) -> None:
    assert new_channel({"kind": "webhook", "url": url}, LAB).target == {"url": url}


@pytest.mark.parametrize("url", LINK_LOCAL_URLS)
def test_link_local_hosts_where_cloud_metadata_answers_are_refused_even_in_a_lab(
    url: str,
) -> None:
    with pytest.raises(Invalid) as err:
        new_channel({"kind": "webhook", "url": url}, LAB)
    assert "link-local" in err.value.detail and "never allowed" in err.value.detail


async def test_in_a_lab_a_name_that_resolves_to_a_metadata_address_is_still_refused() -> None:
    lab = PublicOnlyResolver(FixedAnswers(["10.0.0.5"], ["169.254.169.254"]), allow_private=True)
    assert await lab.resolve("receiver.lab", 80)  # a private receiver is the lab's own
    with pytest.raises(NonPublicAddress):
        await lab.resolve("receiver.lab", 80)


def test_private_hosts_are_refused_unless_allowed_by_default() -> None:
    with pytest.raises(Invalid):
        new_channel({"kind": "webhook", "url": "http://127.0.0.1/x"})


def test_a_push_endpoint_on_a_private_address_is_refused_like_a_webhook() -> None:
    with pytest.raises(Invalid) as err:
        new_channel({"kind": "push", "subscription": subscription("http://10.0.0.5/p")}, STRICT)
    assert "subscription.endpoint" in err.value.detail and ALLOW_SETTING in err.value.detail
    sub = subscription("http://127.0.0.1:8080/p")
    assert new_channel({"kind": "push", "subscription": sub}, LAB).target == {
        "endpoint": "http://127.0.0.1:8080/p"
    }


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("::ffff:169.254.169.254", "link-local"),
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("fec0::1", "site-local"),
        ("240.0.0.1", "private"),
        ("ff02::1", "multicast"),
        ("64:ff9b::808:808", None),  # NAT64 of 8.8.8.8: public
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_an_ipv6_address_that_carries_an_ipv4_one_is_judged_by_it(
    address: str, kind: str | None
) -> None:
    assert non_public(ip_address(address)) == kind


def test_host_names_are_left_to_the_resolver_except_localhost() -> None:
    assert literal_refusal("hooks.example.com") is None
    assert literal_refusal("localhost") is not None
    assert literal_refusal("my-app.localhost.") is not None


def test_an_email_channel_is_refused_when_no_smtp_server_is_configured() -> None:
    args = {"kind": "email", "to": "tech@acme.example"}
    with pytest.raises(Invalid) as err:
        new_channel(args, Rules(smtp_configured=False))
    assert err.value.status == 422
    assert "EPM_SMTP_URL" in err.value.detail
    assert "smtp://host:25" in err.value.detail and "smtps://host:465" in err.value.detail
    assert new_channel(args, Rules(smtp_configured=True)).target == {"to": "tech@acme.example"}


def test_a_malformed_address_is_reported_as_such_before_smtp_is_mentioned() -> None:
    with pytest.raises(Invalid) as err:
        new_channel({"kind": "email", "to": "nope"}, Rules(smtp_configured=False))
    assert "EPM_SMTP_URL" not in err.value.detail


# --- at delivery: what a host name resolves to ------------------------------------------


class FixedAnswers(AbstractResolver):
    """A resolver that answers each lookup with the next of ``answers`` (a DNS server
    that changes its answer between lookups, as in DNS rebinding)."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.lookups = 0

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = self.answers[min(self.lookups, len(self.answers) - 1)]
        self.lookups += 1
        return [
            ResolveResult(
                hostname=host,
                host=a,
                port=port,
                family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                proto=0,
                flags=0,
            )
            for a in addresses
        ]

    async def close(self) -> None:
        pass


async def test_a_name_that_resolves_to_public_addresses_only_is_resolved() -> None:
    guard = PublicOnlyResolver(FixedAnswers(["93.184.215.14", "2606:2800:21f:cb07::1"]))
    found = await guard.resolve("hooks.example.com", 443)
    assert [r["host"] for r in found] == ["93.184.215.14", "2606:2800:21f:cb07::1"]


async def test_a_name_that_resolves_to_a_private_address_is_refused_even_among_public_ones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    for answer in (["10.0.0.5"], ["93.184.215.14", "169.254.169.254"], ["fe80::1%2"]):
        guard = PublicOnlyResolver(FixedAnswers(answer))
        with pytest.raises(NonPublicAddress) as err:
            await guard.resolve("internal.example.com", 80)
        assert all(a.split("%")[0] not in str(err.value) for a in answer)
    # the operator's log says which address
    assert "169.254.169.254" in [getattr(r, "address", None) for r in caplog.records]


async def test_a_name_rebound_to_a_private_address_is_refused_on_the_next_lookup() -> None:
    guard = PublicOnlyResolver(FixedAnswers(["93.184.215.14"], ["127.0.0.1"]))
    assert await guard.resolve("rebind.example.com", 80)
    with pytest.raises(NonPublicAddress):
        await guard.resolve("rebind.example.com", 80)


async def test_the_system_resolver_answer_for_localhost_is_refused() -> None:
    guard = PublicOnlyResolver()
    try:
        with pytest.raises(NonPublicAddress):
            await guard.resolve("localhost", 80)
    finally:
        await guard.close()
