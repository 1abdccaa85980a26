"""Notification channels: what a channel is, how its input is checked, who may manage it.

Pure: no I/O. A channel belongs to one tenant or to the MSP (the reserved
tenant ``_global``). Its target (URL, address, push endpoint) travels in
NotificationChannelAdded in clear; its secret (a webhook signing secret, a
push subscription's keys) is sealed by the caller before it goes anywhere.

What a deployment accepts depends on its settings (Rules): URLs must point at
public hosts unless EPM_NOTIFY_ALLOW_PRIVATE_WEBHOOKS is set (epm_notify.addresses),
and e-mail channels need EPM_SMTP_URL.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from dataclasses import dataclass
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

import orjson
from epm_events.ids import GLOBAL_TENANT
from epm_service.errors import Forbidden, Invalid, NotFound
from epm_service.principal import Principal

from epm_notify.addresses import literal_refusal, refused_url_message
from epm_notify.mail import SMTP_URL_FORMS

Kind = Literal["webhook", "email", "push"]
KINDS: tuple[Kind, ...] = get_args(Kind)
MSP_WIDE = GLOBAL_TENANT
MANAGERS = frozenset({"msp_admin", "tenant_admin"})

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
_EMAIL = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


@dataclass(frozen=True, slots=True)
class Rules:
    """What this notify-svc accepts, from its settings: URLs to loopback, private and
    link-local hosts (EPM_NOTIFY_ALLOW_PRIVATE_WEBHOOKS), e-mail channels (EPM_SMTP_URL)."""

    allow_private_hosts: bool = False
    smtp_configured: bool = False


STRICT = Rules()  # nothing private, no e-mail


@dataclass(frozen=True, slots=True)
class NewChannel:
    """A checked ``add_channel`` request. ``secret`` is to be sealed; ``shown_secret`` is the
    one the caller sees once (a webhook secret, generated when none was given)."""

    kind: Kind
    target: dict[str, Any]
    secret: str | None
    shown_secret: str | None


def new_channel(args: dict[str, Any], rules: Rules = STRICT) -> NewChannel:
    kind = args.get("kind")
    if kind not in KINDS:
        raise Invalid(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if kind == "webhook":
        url = check_url(args.get("url"), "url", rules)
        given = args.get("secret")
        secret = generate_webhook_secret() if given in (None, "") else str(given)
        webhook_key(secret)
        return NewChannel("webhook", {"url": url}, secret, secret)
    if kind == "email":
        to = check_email(args.get("to"))
        if not rules.smtp_configured:
            raise Invalid(
                "e-mail channels need an SMTP server and notify-svc has none: set EPM_SMTP_URL "
                f"for notify-svc to {SMTP_URL_FORMS}, then add the channel again"
            )
        return NewChannel("email", {"to": to}, None, None)
    endpoint, keys = check_subscription(args.get("subscription"), rules)
    return NewChannel("push", {"endpoint": endpoint}, orjson.dumps(keys).decode(), None)


# --- webhook secrets (Standard Webhooks: whsec_<base64>) -------------------------------


def generate_webhook_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def webhook_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret: its base64 part, decoded."""
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
        raise Invalid(
            "secret must look like whsec_<base64 of 24 to 64 random bytes>; omit it "
            "to have one generated"
        )
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise Invalid("the part of the secret after whsec_ is not valid base64") from None
    if not 24 <= len(key) <= 64:
        raise Invalid(f"secret must hold 24 to 64 random bytes, not {len(key)}")
    return key


# --- targets ------------------------------------------------------------------------------


def check_url(value: Any, what: str, rules: Rules) -> str:
    if not isinstance(value, str) or not value:
        raise Invalid(f"{what} is required: an http:// or https:// URL")
    if len(value) > 2048:
        raise Invalid(f"{what} is longer than 2048 characters")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise Invalid(f"{what} {value!r} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid(f"{what} must be an http:// or https:// URL with a host, not {value!r}")
    if parts.username or parts.password:
        raise Invalid(f"{what} must not carry credentials; webhooks are signed instead")
    why = literal_refusal(parts.hostname, rules.allow_private_hosts)
    if why is not None:
        raise Invalid(refused_url_message(what, value, why, rules.allow_private_hosts))
    return value


def check_email(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 254 or not _EMAIL.fullmatch(value):
        raise Invalid(f"to must be one e-mail address like tech@example.com, not {value!r}")
    return value


def check_subscription(value: Any, rules: Rules) -> tuple[str, dict[str, str]]:
    """A browser's PushSubscription JSON: ``{endpoint, keys: {p256dh, auth}}``."""
    if not isinstance(value, dict):
        raise Invalid("subscription must be a PushSubscription object {endpoint, keys}")
    endpoint = check_url(value.get("endpoint"), "subscription.endpoint", rules)
    keys = value.get("keys")
    if not isinstance(keys, dict):
        raise Invalid("subscription.keys must hold p256dh and auth")
    p256dh = _b64url(keys.get("p256dh"), "subscription.keys.p256dh")
    auth = _b64url(keys.get("auth"), "subscription.keys.auth")
    if len(p256dh) != 65 or p256dh[0] != 4:
        raise Invalid("subscription.keys.p256dh must be an uncompressed P-256 point (65 bytes)")
    if len(auth) != 16:
        raise Invalid("subscription.keys.auth must be 16 bytes")
    return endpoint, {"p256dh": str(keys["p256dh"]), "auth": str(keys["auth"])}


def _b64url(value: Any, what: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise Invalid(f"{what} is required (base64url)")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise Invalid(f"{what} is not valid base64url") from None


# --- who may manage which channels ----------------------------------------------------


def scope_of(args: dict[str, Any]) -> str:
    """The tenant a command is about; absent means the MSP-wide channels."""
    tenant = args.get("tenant")
    return MSP_WIDE if tenant in (None, "") else str(tenant)


def authorize(p: Principal, scope: str, *, existing: bool = False) -> None:
    """tenant_admin manages its own tenant's channels, msp_admin everything.

    Another tenant's channels are 404, so their existence does not leak; so is an
    existing MSP-wide channel to a tenant principal. Anything else refused is 403.
    """
    if scope == MSP_WIDE:
        if p.role == "msp_admin":
            return
        if existing and p.tenant is not None:
            raise NotFound("channel not found")
        raise Forbidden("MSP-wide channels are managed by an msp_admin")
    if not p.sees_tenant(scope):
        raise NotFound("channel not found" if existing else f"tenant {scope!r} not found")
    if p.role not in MANAGERS:
        raise Forbidden(
            f"{p.role} may not manage notification channels; ask a tenant_admin or msp_admin"
        )
