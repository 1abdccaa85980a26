"""NATS decentralized JWT auth: nkeys, JWTs, creds files, and what each role may do.

The trust chain (README.md, "Security: NATS"; deploy/README.md): an
*operator* signs two accounts, the *system* account (``$SYS``: the
resolver's claim updates) and the *EPM* account (JetStream on). Every client is a *user* of an account: a JWT signed
by that account's signing key, naming what it may publish and subscribe to.
nats-server checks the chain and enforces the permissions; it needs no
reload for a new user. Revoking a user means a new account JWT (with the
user's key in ``revocations``) pushed to the resolver on
``$SYS.REQ.CLAIMS.UPDATE``, which only a system-account user may do.

Who holds what: ``AuthKeys`` (every seed) stays with the operator (``epm
nats-auth init``, or the ``epm dev`` data dir); services that issue
credentials get an ``Issuer`` (the account signing key; request-svc also the
operator signing key and system creds, to push revocations).

JWTs are base64url JSON signed with an ed25519 nkey (``alg: ed25519-nkey``),
the format of github.com/nats-io/jwt v2, written here on top of ``nkeys``.
Seeds and creds are secrets: never log them; files holding them are 0600.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import nkeys  # type: ignore[import-untyped]
import orjson
from epm_events.ids import validate_device, validate_tenant
from epm_events.streams import AGENT, ALL_STREAMS, DEVICE, EVENTS
from epm_events.subjects import (
    ALL_DEVICE,
    DECIDING_NOTICE,
    DEVICE_RPC_PREFIX,
    UNDECIDED_NOTICE,
    device_filter,
    device_inbox_prefix,
    dlq_subject,
    rpc_service_filter,
    tenant_events_filter,
)
from epm_events.subjects import ALL_EVENTS as EVENTS_SUBJECTS
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

Kind = Literal["operator", "account", "user"]
_PREFIX: dict[Kind, int] = {
    "operator": nkeys.PREFIX_BYTE_OPERATOR,
    "account": nkeys.PREFIX_BYTE_ACCOUNT,
    "user": nkeys.PREFIX_BYTE_USER,
}
ACCOUNT_NAME = "EPM"
SYSTEM_ACCOUNT_NAME = "SYS"
CLAIMS_UPDATE = "$SYS.REQ.CLAIMS.UPDATE"
# Revoked device and integrator users stay revoked: every JWT of theirs issued before this
# is refused.
REVOKED_FOREVER = 2**53 - 1
INTEGRATOR_CREDS_SECONDS = 24 * 3600


class NatsAuthError(ValueError):
    pass


# --- keys -------------------------------------------------------------------------


@dataclass(frozen=True)
class NKey:
    """An ed25519 nkey of one kind. ``seed`` is the secret (``S...``); ``public`` is its id."""

    seed: str = field(repr=False)
    public: str

    @classmethod
    def new(cls, kind: Kind) -> NKey:
        return cls.from_raw(kind, secrets.token_bytes(32))

    @classmethod
    def from_raw(cls, kind: Kind, raw: bytes) -> NKey:
        seed = nkeys.encode_seed(raw, _PREFIX[kind]).decode()
        return cls.from_seed(seed)

    @classmethod
    def from_seed(cls, seed: str) -> NKey:
        try:
            kp = nkeys.from_seed(seed.strip().encode())
        except nkeys.NkeysError as exc:
            raise NatsAuthError(f"not an nkey seed: {exc}") from None
        return cls(seed=seed.strip(), public=kp.public_key.decode())

    def sign(self, data: bytes) -> bytes:
        signature: bytes = nkeys.from_seed(self.seed.encode()).sign(data)
        return signature


def derive_user_key(secret: bytes, *parts: str) -> NKey:
    """A user nkey that is a function of a secret and a name (a device, an integrator token),
    so whoever holds the secret can find the key again to revoke it, without storing it
    anywhere."""
    info = b"epm nats user v1\x1f" + "\x1f".join(parts).encode()
    return NKey.from_raw("user", hmac.new(secret, info, hashlib.sha256).digest())


# --- JWTs -------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode_jwt(
    subject: str,
    name: str,
    nats: Mapping[str, Any],
    signer: NKey,
    expires_in: int | None = None,
) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iat": now,
        "iss": signer.public,
        "name": name,
        "sub": subject,
        "nats": {**nats, "version": 2},
    }
    if expires_in is not None:
        claims["exp"] = now + expires_in
    # jti as nats-io/jwt computes it: base32 of SHA-512/256 of the claims without it
    digest = hashlib.new("sha512_256", orjson.dumps(claims)).digest()
    claims = {"jti": base64.b32encode(digest).decode().rstrip("="), **claims}
    header = _b64(orjson.dumps({"typ": "JWT", "alg": "ed25519-nkey"}))
    body = f"{header}.{_b64(orjson.dumps(claims))}"
    return f"{body}.{_b64(signer.sign(body.encode()))}"


def decode_jwt(token: str) -> dict[str, Any]:
    """The claims of a JWT whose signature checks against its issuer, else NatsAuthError."""
    try:
        header, body, signature = token.strip().split(".")
        claims: dict[str, Any] = orjson.loads(_unb64(body))
        issuer = str(claims["iss"])
        raw = base64.b32decode(issuer + "=" * (-len(issuer) % 8))
        VerifyKey(raw[1:33]).verify(f"{header}.{body}".encode(), _unb64(signature))
    except (ValueError, KeyError, TypeError, BadSignatureError, orjson.JSONDecodeError) as exc:
        raise NatsAuthError(f"not a valid NATS JWT: {type(exc).__name__}") from None
    return claims


# --- permissions --------------------------------------------------------------------


@dataclass(frozen=True)
class Permissions:
    """What a user may publish and subscribe to. ``responses``: it may answer requests it
    received (publish once to their reply subject), the NATS ``allow_responses``."""

    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    deny_publish: tuple[str, ...] = ()
    deny_subscribe: tuple[str, ...] = ()
    responses: bool = False

    def claims(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "pub": _allow_deny(self.publish, self.deny_publish),
            "sub": _allow_deny(self.subscribe, self.deny_subscribe),
        }
        if self.responses:
            out["resp"] = {"max": 1, "ttl": 0}
        return out


def _allow_deny(allow: tuple[str, ...], deny: tuple[str, ...]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    if allow:
        out["allow"] = list(dict.fromkeys(allow))
    if deny:
        out["deny"] = list(dict.fromkeys(deny))
    return out


def _stream_reader(stream: str) -> tuple[str, ...]:
    """Everything a trusted service does with a stream it reads: info, gets, consumers of
    any kind on it, acks and flow control. Never the stream's definition (``epm streams
    apply`` alone creates, updates or deletes streams)."""
    api = "$JS.API"
    return (
        f"{api}.STREAM.MSG.GET.{stream}",
        f"{api}.DIRECT.GET.{stream}",
        f"{api}.DIRECT.GET.{stream}.>",
        f"{api}.CONSUMER.CREATE.{stream}",
        f"{api}.CONSUMER.CREATE.{stream}.>",
        f"{api}.CONSUMER.DURABLE.CREATE.{stream}.*",
        f"{api}.CONSUMER.INFO.{stream}.*",
        f"{api}.CONSUMER.DELETE.{stream}.*",
        f"{api}.CONSUMER.MSG.NEXT.{stream}.*",
        f"$JS.ACK.{stream}.>",
        f"$JS.FC.{stream}.>",
    )


def service_inbox_prefix(service: str) -> str:
    """A service's own reply subjects: apart from every device's ``_INBOX.<t>.<d>``."""
    return f"_INBOX_{service}"


@dataclass(frozen=True)
class ServiceGrant:
    """What one service does on the bus (docs/internal-contracts.md), as data."""

    aggregates: tuple[str, ...]  # it appends epm.evt.<tenant>.<aggregate>.…
    reads: tuple[str, ...] = (EVENTS.name,)  # streams it consumes
    calls: tuple[str, ...] = ()  # services whose commands it sends
    publishes: tuple[str, ...] = ()  # anything else it publishes
    subscribes: tuple[str, ...] = ()  # anything else it serves


SERVICE_GRANTS: dict[str, ServiceGrant] = {
    "gateway": ServiceGrant(
        aggregates=("tenant", "token"),
        calls=("request-svc", "approval-svc", "audit-svc", "notify-svc"),
    ),
    "request-svc": ServiceGrant(
        aggregates=("enrollment", "device", "request", "alert"),
        reads=(EVENTS.name, AGENT.name),
        calls=("approval-svc",),
        # decisions and replay acks to devices; online answers on a device's Epm-Reply-To
        publishes=(ALL_DEVICE, "_INBOX.*.*.>"),
        subscribes=(UNDECIDED_NOTICE, DECIDING_NOTICE),
    ),
    "approval-svc": ServiceGrant(
        aggregates=(
            "devicekey",
            "policy",
            "tenantkey",
            "request",
            "rule",
            "ruleproposal",
            "grant",
        ),
        publishes=(ALL_DEVICE, UNDECIDED_NOTICE, DECIDING_NOTICE),
        subscribes=(f"{DEVICE_RPC_PREFIX}.*.*.*",),
    ),
    "audit-svc": ServiceGrant(aggregates=("audit", "auditkey")),
    "notify-svc": ServiceGrant(aggregates=("channel", "notification")),
}


def service_permissions(service: str) -> Permissions:
    grant = SERVICE_GRANTS.get(service)
    if grant is None:
        raise NatsAuthError(f"no NATS grant for service {service!r}: add it to SERVICE_GRANTS")
    publish = [
        *(f"{EVENTS_SUBJECTS[:-2]}.*.{aggregate}.>" for aggregate in grant.aggregates),
        *(rpc_service_filter(callee) for callee in (service, *grant.calls)),
        dlq_subject(service),
        "$JS.API.INFO",
        "$JS.API.STREAM.NAMES",
        *(f"$JS.API.STREAM.INFO.{s.name}" for s in ALL_STREAMS),
        *(subject for stream in grant.reads for subject in _stream_reader(stream)),
        *grant.publishes,
    ]
    subscribe = [
        rpc_service_filter(service),
        f"{service_inbox_prefix(service)}.>",
        *grant.subscribes,
    ]
    return Permissions(publish=tuple(publish), subscribe=tuple(subscribe), responses=True)


def admin_permissions() -> Permissions:
    """``epm streams apply`` and operators' tools: the whole JetStream API."""
    return Permissions(publish=("$JS.API.>",), subscribe=("_INBOX.>",))


def device_consumer_name(tenant: str, device: str) -> str:
    """The one EPM_DEVICE consumer a device may create (its permissions name it)."""
    return f"dev_{validate_tenant(tenant, allow_global=False)}_{validate_device(device)}"


def device_permissions(tenant: str, device: str) -> Permissions:
    """A device: its own ingress subject, its own device commands, its own inbox, and one
    consumer on its own EPM_DEVICE subject (the filter is in the create subject, so the
    server refuses any other filter). Nothing else."""
    consumer = device_consumer_name(tenant, device)
    stream = DEVICE.name
    return Permissions(
        publish=(
            f"epm.agent.{tenant}.{device}.>",
            f"{DEVICE_RPC_PREFIX}.{tenant}.{device}.>",
            f"$JS.API.CONSUMER.CREATE.{stream}.{consumer}.{device_filter(tenant, device)}",
            f"$JS.API.CONSUMER.INFO.{stream}.{consumer}",
            f"$JS.API.CONSUMER.DELETE.{stream}.{consumer}",
            f"$JS.FC.{stream}.{consumer}.>",
        ),
        subscribe=(f"{device_inbox_prefix(tenant, device)}.>",),
    )


def integrator_inbox_prefix(token_id: str) -> str:
    return f"_INBOX_integrator.{token_id}"


def integrator_permissions(token_id: str, tenant: str | None) -> Permissions:
    """Push consumers on EPM_EVENTS, filtered to the tenant (every tenant: ``None``).

    The filter is in the create subject, so the server refuses another tenant's. No pull
    (``MSG.NEXT`` would reach the services' durable consumers), no acks (ordered
    consumers need none), no consumer info or delete (other integrators' consumers)."""
    stream = EVENTS.name
    api = f"$JS.API.CONSUMER.CREATE.{stream}"
    creates: tuple[str, ...] = (
        (api, f"{api}.>", f"$JS.API.STREAM.INFO.{stream}")
        if tenant is None
        else (f"{api}.*.{tenant_events_filter(tenant)}",)
    )
    return Permissions(
        publish=(*creates, "$JS.API.STREAM.NAMES", f"$JS.FC.{stream}.>"),
        subscribe=(f"{integrator_inbox_prefix(token_id)}.>",),
    )


# --- claims -------------------------------------------------------------------------

_NO_LIMITS = {
    "subs": -1,
    "data": -1,
    "payload": -1,
    "imports": -1,
    "exports": -1,
    "wildcards": True,
    "conn": -1,
    "leaf": -1,
}
_JETSTREAM = {
    "mem_storage": -1,
    "disk_storage": -1,
    "streams": -1,
    "consumer": -1,
}


def operator_jwt(operator: NKey, signing_keys: Iterable[str], system_account: str) -> str:
    nats = {
        "type": "operator",
        "signing_keys": list(signing_keys),
        "system_account": system_account,
    }
    return encode_jwt(operator.public, "epm", nats, operator)


def account_jwt(
    account: str,
    name: str,
    signer: NKey,
    signing_keys: Iterable[str],
    *,
    jetstream: bool,
    revocations: Mapping[str, int] | None = None,
) -> str:
    """An account JWT, signed by the operator (or its signing key)."""
    nats: dict[str, Any] = {
        "type": "account",
        "limits": {**_NO_LIMITS, **(_JETSTREAM if jetstream else {})},
        "signing_keys": list(signing_keys),
        "default_permissions": {"pub": {}, "sub": {}},
    }
    if revocations:
        nats["revocations"] = dict(sorted(revocations.items()))
    return encode_jwt(account, name, nats, signer)


def user_jwt(
    user: str,
    name: str,
    account: NKey | str,
    signer: NKey,
    permissions: Permissions,
    expires_in: int | None = None,
) -> str:
    """A user JWT signed by ``signer``: the account itself, or one of its signing keys
    (then ``account`` names the account it belongs to)."""
    account_public = account if isinstance(account, str) else account.public
    nats: dict[str, Any] = {
        "type": "user",
        **permissions.claims(),
        "subs": -1,
        "data": -1,
        "payload": -1,
    }
    if signer.public != account_public:
        nats["issuer_account"] = account_public
    return encode_jwt(user, name, nats, signer, expires_in)


def creds(jwt: str, seed: str) -> str:
    """The standard creds file text (what ``nsc`` writes and nats clients read)."""
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{jwt}\n"
        "------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{seed}\n"
        "------END USER NKEY SEED------\n\n"
        "*************************************************************\n"
    )


def read_creds(text: str) -> tuple[str, NKey]:
    """(user JWT, user key) from a creds file's text."""
    blocks = [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.startswith(("-", "*")) and " " not in line.strip()
    ]
    if len(blocks) != 2:
        raise NatsAuthError("not a NATS creds file: expected a JWT block and a seed block")
    return blocks[0], NKey.from_seed(blocks[1])


def new_user_creds(
    name: str,
    account: str,
    signer: NKey,
    permissions: Permissions,
    expires_in: int | None = None,
) -> str:
    user = NKey.new("user")
    return creds(user_jwt(user.public, name, account, signer, permissions, expires_in), user.seed)


# --- who holds what -----------------------------------------------------------------


@dataclass(frozen=True)
class Issuer:
    """What a service that hands out credentials holds (``EPM_NATS_ISSUER``, a 0600 file):
    the account and its signing key; for request-svc, which revokes devices, also the
    operator signing key (to sign account JWTs) and system-account creds (to push them)."""

    account: str
    account_signing: NKey
    device_secret: bytes = field(repr=False)
    operator_signing: NKey | None = None
    system_creds: str | None = field(default=None, repr=False)

    @classmethod
    def load(cls, path: str | Path) -> Issuer:
        try:
            data = orjson.loads(Path(path).read_bytes())
            return cls(
                account=str(data["account"]),
                account_signing=NKey.from_seed(data["account_signing_seed"]),
                device_secret=base64.b64decode(data["device_secret"]),
                operator_signing=NKey.from_seed(data["operator_signing_seed"])
                if data.get("operator_signing_seed")
                else None,
                system_creds=data.get("system_creds") or None,
            )
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise NatsAuthError(
                f"cannot read the NATS issuer file {path}: {type(exc).__name__}; "
                "write it with 'epm nats-auth init'"
            ) from None

    def dump(self) -> bytes:
        data: dict[str, Any] = {
            "account": self.account,
            "account_signing_seed": self.account_signing.seed,
            "device_secret": base64.b64encode(self.device_secret).decode(),
        }
        if self.operator_signing is not None:
            data["operator_signing_seed"] = self.operator_signing.seed
        if self.system_creds is not None:
            data["system_creds"] = self.system_creds
        return orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n"

    def without_revocation(self) -> Issuer:
        """The part the gateway needs: issue users, never touch the account."""
        return Issuer(self.account, self.account_signing, self.device_secret)

    def device_user(self, tenant: str, device: str) -> NKey:
        return derive_user_key(self.device_secret, "device", tenant, device)

    def device_creds(self, tenant: str, device: str) -> str:
        user = self.device_user(tenant, device)
        jwt = user_jwt(
            user.public,
            f"device {tenant}/{device}",
            self.account,
            self.account_signing,
            device_permissions(tenant, device),
        )
        return creds(jwt, user.seed)

    def integrator_user(self, token_id: str) -> NKey:
        """The NATS user of an integrator token: every creds issued for the token are this
        user, so revoking the token revokes them all (request-svc finds the key again)."""
        return derive_user_key(self.device_secret, "integrator", token_id)

    def integrator_creds(
        self, token_id: str, tenant: str | None, expires_in: int = INTEGRATOR_CREDS_SECONDS
    ) -> str:
        """Creds that expire (a day) and are revoked with the token; a revoked token gets no
        new ones."""
        user = self.integrator_user(token_id)
        jwt = user_jwt(
            user.public,
            f"integrator {token_id} ({tenant or 'every tenant'})",
            self.account,
            self.account_signing,
            integrator_permissions(token_id, tenant),
            expires_in,
        )
        return creds(jwt, user.seed)

    def account_jwt(self, revoked_users: Iterable[str] = ()) -> str:
        """The EPM account JWT with these users revoked (needs the operator signing key)."""
        if self.operator_signing is None:
            raise NatsAuthError("this issuer has no operator signing key: it cannot revoke")
        return account_jwt(
            self.account,
            ACCOUNT_NAME,
            self.operator_signing,
            [self.account_signing.public],
            jetstream=True,
            revocations={user: REVOKED_FOREVER for user in revoked_users},
        )


@dataclass(frozen=True)
class AuthKeys:
    """Every seed of one deployment, created once (``epm nats-auth init``, ``epm dev``)."""

    operator: NKey
    operator_signing: NKey
    system_account: NKey
    account: NKey
    account_signing: NKey
    device_secret: bytes = field(repr=False)

    @classmethod
    def create(cls) -> AuthKeys:
        return cls(
            operator=NKey.new("operator"),
            operator_signing=NKey.new("operator"),
            system_account=NKey.new("account"),
            account=NKey.new("account"),
            account_signing=NKey.new("account"),
            device_secret=secrets.token_bytes(32),
        )

    @classmethod
    def load(cls, path: Path) -> AuthKeys:
        try:
            data = orjson.loads(path.read_bytes())
            return cls(
                **{k: NKey.from_seed(data[k]) for k in _KEY_FIELDS},
                device_secret=base64.b64decode(data["device_secret"]),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise NatsAuthError(f"{path} is not an EPM NATS key file ({exc})") from None

    @classmethod
    def load_or_create(cls, path: Path) -> AuthKeys:
        if path.exists():
            return cls.load(path)
        keys = cls.create()
        data = {k: getattr(keys, k).seed for k in _KEY_FIELDS}
        data["device_secret"] = base64.b64encode(keys.device_secret).decode()
        write_private(path, orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
        return keys

    def operator_jwt(self) -> str:
        return operator_jwt(
            self.operator, [self.operator_signing.public], self.system_account.public
        )

    def system_account_jwt(self) -> str:
        return account_jwt(
            self.system_account.public,
            SYSTEM_ACCOUNT_NAME,
            self.operator_signing,
            [],
            jetstream=False,
        )

    def system_creds(self) -> str:
        return new_user_creds(
            "system", self.system_account.public, self.system_account, Permissions()
        )

    def issuer(self) -> Issuer:
        return Issuer(
            account=self.account.public,
            account_signing=self.account_signing,
            device_secret=self.device_secret,
            operator_signing=self.operator_signing,
            system_creds=self.system_creds(),
        )

    def user_creds(self, name: str, permissions: Permissions) -> str:
        return new_user_creds(name, self.account.public, self.account_signing, permissions)

    def server_config(self, resolver_dir: Path | str) -> str:
        """The auth part of nats-server's configuration: operator mode, the full (``nats``)
        resolver storing account JWTs in ``resolver_dir``, both accounts preloaded."""
        preload = {
            self.system_account.public: self.system_account_jwt(),
            self.account.public: self.issuer().account_jwt(),
        }
        lines = [
            "# EPM NATS auth (epm_service.natsauth): operator mode, no anonymous clients.",
            f'operator: "{self.operator_jwt()}"',
            f'system_account: "{self.system_account.public}"',
            "resolver: {",
            "  type: full",
            f'  dir: "{resolver_dir}"',
            "  allow_delete: false",
            '  interval: "2m"',
            '  timeout: "5s"',
            "}",
            "resolver_preload: {",
            *(f'  {account}: "{jwt}"' for account, jwt in preload.items()),
            "}",
        ]
        return "\n".join(lines) + "\n"


_KEY_FIELDS = ("operator", "operator_signing", "system_account", "account", "account_signing")


def write_private(path: Path, data: bytes) -> None:
    """Write a secret atomically, mode 0600 from the first byte on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
