"""audit-svc's commands (``epm.rpc.audit-svc.<command>``): queries of the trail, never writes.

Who sees what (API.md): every role may read audit, within its tenants. A
tenant principal reads its own tenant's chain; asking for another tenant is
404, as if it did not exist. MSP principals (and all-tenant integrators) read
any chain, ``_global`` included, or all of them at once.
"""

from __future__ import annotations

import base64
import binascii
import difflib
from datetime import datetime
from typing import Any

import orjson
from epm_events.catalog import EVENT_TYPES
from epm_events.ids import GLOBAL_TENANT, validate_tenant
from epm_service.errors import Invalid, NotFound
from epm_service.paging import FOREIGN_CURSOR
from epm_service.principal import Principal
from epm_service.projection import Projector
from epm_service.tenants import tenant_exists
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from epm_audit.queries import (
    AuditFilter,
    export_page,
    has_tenant,
    key_events,
    last_seq,
    list_page,
    verify_trail,
)

CURSOR_PREFIX = "audit:"
MAX_SEQ = 2**63 - 1


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListArgs(Args):
    tenant: str | None = None
    type: str | None = Field(default=None, max_length=100)
    device: str | None = Field(default=None, max_length=200)
    user: str | None = Field(default=None, max_length=256)
    request: str | None = Field(default=None, max_length=200)
    since: datetime | None = None
    until: datetime | None = None
    cursor: str | None = None
    limit: int = Field(default=100, ge=1, le=500)


class ExportArgs(Args):
    tenant: str | None = None
    after: int = Field(default=0, ge=0, le=MAX_SEQ)
    through: int | None = Field(default=None, ge=0, le=MAX_SEQ)


class VerifyArgs(Args):
    tenant: str | None = None


def parse(model: type[Args], args: dict[str, Any]) -> Any:
    try:
        return model.model_validate(args)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise Invalid(problems) from None


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"{CURSOR_PREFIX}{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if text.startswith(CURSOR_PREFIX):
            seq = int(text.removeprefix(CURSOR_PREFIX))
            if 0 <= seq <= MAX_SEQ:  # what SQLite can hold
                return seq
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise Invalid(FOREIGN_CURSOR)


def check_type(name: str | None) -> None:
    """Invalid, naming the event types, unless ``name`` is one: a typo in a filter must not
    pass for an empty trail."""
    if name is None or name in EVENT_TYPES:
        return
    close = difflib.get_close_matches(name, EVENT_TYPES, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    known = ", ".join(sorted(EVENT_TYPES))
    raise Invalid(f"type: {name!r} is not an event type{hint}; the types are {known}")


def _ns(when: datetime | None, name: str) -> int | None:
    if when is None:
        return None
    if when.tzinfo is None:
        raise Invalid(f"{name} needs a time zone, e.g. 2025-03-03T08:00:00Z")
    ns = int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000
    if not -(2**63) <= ns < 2**63:  # what SQLite (and the stream's timestamps) can hold
        raise Invalid(f"{name} must be between the years 1678 and 2262")
    return ns


class AuditCommands:
    def __init__(self, trail: Projector, tenants: Projector) -> None:
        self.trail = trail
        self.tenants = tenants

    async def scope(self, who: Principal, tenant: str | None) -> str | None:
        """The chain ``who`` asks for (None: every chain), or NotFound."""
        if tenant is None:
            return who.tenant
        validate_tenant(tenant)
        hidden = NotFound(f"there is no tenant {tenant!r} among yours")
        if not who.sees_tenant(tenant) or (tenant == GLOBAL_TENANT and who.tenant is not None):
            raise hidden
        if tenant != GLOBAL_TENANT:
            known = await self.tenants.read(lambda c: tenant_exists(c, tenant))
            if not known and not await self.trail.read(lambda c: has_tenant(c, tenant)):
                raise hidden
        return tenant

    async def list(self, args: dict[str, Any], who: Principal) -> dict[str, Any]:
        a: ListArgs = parse(ListArgs, args)
        check_type(a.type)
        f = AuditFilter(
            tenant=await self.scope(who, a.tenant),
            type=a.type,
            device=a.device,
            user=a.user,
            request=a.request,
            since_ns=_ns(a.since, "since"),
            until_ns=_ns(a.until, "until"),
        )
        after = decode_cursor(a.cursor) if a.cursor else 0
        page = await self.trail.read(lambda c: list_page(c, f, after, a.limit))
        out: dict[str, Any] = {"items": [orjson.Fragment(line) for line in page.lines]}
        if page.next_after is not None:
            out["next_cursor"] = encode_cursor(page.next_after)
        return out

    async def export_page(self, args: dict[str, Any], who: Principal) -> dict[str, Any]:
        """One page of NDJSON; the first call fixes ``through``, the trail's end at that time,
        and every later call of the same export passes it back with ``after``."""
        a: ExportArgs = parse(ExportArgs, args)
        tenant = await self.scope(who, a.tenant)
        through = a.through if a.through is not None else await self.trail.read(last_seq)
        page = await self.trail.read(lambda c: export_page(c, tenant, a.after, through))
        return {
            # base64: a page's size is then bounded whatever its events hold (JSON string
            # escapes could double it), and the gateway streams the bytes as they are
            "ndjson_base64": base64.b64encode(
                b"".join(line + b"\n" for line in page.lines)
            ).decode(),
            "records": len(page.lines),
            "next_after": page.next_after,
            "through": through,
        }

    async def verify(self, args: dict[str, Any], who: Principal) -> dict[str, Any]:
        a: VerifyArgs = parse(VerifyArgs, args)
        tenant = await self.scope(who, a.tenant)
        verdict = await self.trail.read(lambda c: verify_trail(c, tenant))
        return verdict.to_dict()

    async def keys(self, args: dict[str, Any], who: Principal) -> dict[str, Any]:
        """The public halves of the checkpoint signing keys (nothing secret: any principal)."""
        found = await self.trail.read(key_events)
        return {
            "items": [
                {
                    "key_id": k["key_id"],
                    "algorithm": k.get("algorithm", "Ed25519"),
                    "public_key": k["public_key"],
                    "created_at": k.get("created_at"),
                }
                for k in found
            ]
        }
