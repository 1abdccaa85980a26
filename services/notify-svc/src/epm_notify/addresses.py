"""Where notify-svc may send: public addresses only, unless the deployment allows more.

Pure: no I/O. Webhook URLs and push endpoints are chosen by tenant admins, and
notify-svc POSTs to them from inside the network it runs in; without a check a
channel could reach loopback services, the cluster's private addresses or a
cloud's metadata service (169.254.169.254), and learn from the delivery errors
what answers there. So a URL whose host is such an address (or "localhost") is
refused when the channel is added, and the addresses a host name resolves to
are checked again before each connection (epm_notify.webhook), which also
covers names that resolve to private addresses and DNS rebinding.

``EPM_NOTIFY_ALLOW_PRIVATE_WEBHOOKS=true`` allows loopback and private addresses, for a
lab or a developer machine whose receivers listen there; link-local addresses (cloud
metadata services) stay refused.
"""

from __future__ import annotations

import socket
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from epm_service.settings import env_name

from epm_notify.config import NotifySettings

ALLOW_SETTING = env_name("allow_private_webhooks", NotifySettings)

IPAddress = IPv4Address | IPv6Address

_SHARED = IPv4Network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598)
_NAT64 = IPv6Network("64:ff9b::/96")  # well-known prefix (RFC 6052): an IPv4 address inside
_SIX_TO_FOUR = IPv6Network("2002::/16")
_LEGACY_IPV4 = frozenset("0123456789abcdefx.")
_LOCAL_NAMES = ("localhost", "localhost.localdomain")


def non_public(ip: IPAddress) -> str | None:
    """What kind of non-public address ``ip`` is ("loopback", "private", ...), or None when
    it is a public unicast address. An IPv6 address that carries an IPv4 one (mapped,
    NAT64, 6to4) is judged by the IPv4 address it leads to."""
    if isinstance(ip, IPv6Address):
        if ip.ipv4_mapped is not None:
            return non_public(ip.ipv4_mapped)
        if ip in _NAT64:
            return non_public(IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip in _SIX_TO_FOUR and ip.sixtofour is not None:
            return non_public(ip.sixtofour)
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"  # 169.254.169.254: cloud metadata services
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, IPv4Address) and ip in _SHARED:
        return "shared (carrier-grade NAT)"
    if isinstance(ip, IPv6Address) and ip.is_site_local:
        return "site-local"
    if ip.is_private:
        return "private"
    if ip.is_reserved or not ip.is_global:
        return "reserved"
    return None


def parse_address(text: str) -> IPAddress | None:
    """An IP address as a URL or a resolver gives it (IPv6 zone and trailing dot allowed),
    including the legacy IPv4 forms the C library accepts (``127.1``, ``0x7f000001``,
    ``2130706433``): a host in one of those forms is connected to as that address."""
    host = text.strip().rstrip(".").removeprefix("[").removesuffix("]")
    try:
        return ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    if host and set(host.lower()) <= _LEGACY_IPV4:
        try:
            return IPv4Address(socket.inet_aton(host))  # parsing only, no lookup
        except OSError:
            return None
    return None


def is_local_name(host: str) -> bool:
    """Names that mean this machine whatever DNS says (RFC 6761)."""
    name = host.strip().rstrip(".").lower()
    return name in _LOCAL_NAMES or name.endswith(".localhost")


def refused_kind(ip: IPAddress, allow_private: bool = False) -> str | None:
    """What kind of address notify-svc does not send to ``ip`` is, or None. With
    ``allow_private`` (a lab) only link-local ones stay refused: that is where cloud
    metadata services answer (169.254.169.254, fe80::), and no lab receiver needs them."""
    kind = non_public(ip)
    if kind is None or (allow_private and kind != "link-local"):
        return None
    return kind


def literal_refusal(host: str, allow_private: bool = False) -> str | None:
    """Why a URL's host is refused as written (before any lookup), or None: a name that
    means this machine, or an address that is not public (``refused_kind``)."""
    if is_local_name(host) and not allow_private:
        return f"{host} (this machine: loopback)"
    ip = parse_address(host)
    if ip is None:
        return None
    kind = refused_kind(ip, allow_private)
    if kind is None:
        return None
    article = "an" if kind[0] in "aeiou" else "a"
    shown = str(ip) if str(ip) == host.strip("[].") else f"{host} = {ip}"
    return f"{article} {kind} address ({shown})"


def refused_url_message(what: str, url: str, why: str, allow_private: bool = False) -> str:
    """The 422 answer to a channel whose URL points at a non-public host."""
    if allow_private:
        return (
            f"{what} {url!r} points at {why}. Link-local addresses are never allowed, also "
            f"with {ALLOW_SETTING}=true: cloud metadata services answer there"
        )
    return (
        f"{what} {url!r} points at {why}. notify-svc sends only to public addresses, so that "
        "a channel cannot reach services inside the network it runs in. To allow loopback "
        f"and private addresses (a lab or a developer machine), set {ALLOW_SETTING}"
        "=true for notify-svc"
    )


def unresolved_delivery(what: str) -> str:
    """A delivery's failure reason when its host name gave no public address: the same for a
    name that does not resolve and one that resolves only to non-public addresses, so that a
    tenant cannot tell which internal names exist from its channels' failures."""
    return (
        f"{what} not sent: its host name does not resolve to a public address (no such name, "
        f"or only loopback, private or link-local addresses, which need {ALLOW_SETTING})"
    )


def refused_delivery(what: str, why: str) -> str:
    """A delivery's failure reason (it reaches the dead letter, which the tenant may see):
    what was refused, never which address a name resolved to."""
    return (
        f"{what} refused without connecting: {why}; only public addresses are allowed "
        f"({ALLOW_SETTING})"
    )
