"""HTTP routes for notification channels, forwarded to notify-svc (the owner)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from epm_gateway.api import Caller, Service
from epm_gateway.elevation import PageCursor, PageLimit, forward, page

NOTIFY = "notify-svc"

router = APIRouter(tags=["notifications"])


class PushKeys(BaseModel):
    model_config = ConfigDict(extra="forbid")

    p256dh: str
    auth: str


class PushSubscription(BaseModel):
    """A browser's ``PushSubscription.toJSON()``, as it comes."""

    model_config = ConfigDict(extra="forbid")

    endpoint: str
    keys: PushKeys
    expirationTime: float | None = Field(  # the browser's name
        default=None, description="the browser's, if any (not kept)", exclude=True
    )


KIND_FIELDS = {"webhook": ("url", "secret"), "email": ("to",), "push": ("subscription",)}
"""The fields each kind of channel takes, besides ``kind``."""


class ChannelIn(BaseModel):
    """A channel: a field it does not know, or one of another kind, is refused (422), not
    ignored; its tenant comes from the path."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["webhook", "email", "push"]
    url: str | None = Field(default=None, description="webhook: where to POST")
    secret: str | None = Field(
        default=None, description="webhook: whsec_... (generated and returned once if omitted)"
    )
    to: str | None = Field(default=None, description="email: the address")
    subscription: PushSubscription | None = Field(
        default=None, description="push: PushSubscription"
    )

    @model_validator(mode="before")
    @classmethod
    def _tenant_from_the_path(cls, data: Any) -> Any:
        """A tenant in the body would be ignored: the channel would go where the path says."""
        if isinstance(data, dict) and "tenant" in data:
            raise ValueError(
                "a channel's tenant comes from the path: POST"
                " /v1/tenants/{tenant}/notification-channels for a tenant's channel,"
                " POST /v1/notification-channels for an MSP-wide one; leave 'tenant' out"
                " of the body"
            )
        return data

    @model_validator(mode="after")
    def _fields_of_its_kind(self) -> ChannelIn:
        others = [
            name
            for kind, names in KIND_FIELDS.items()
            if kind != self.kind
            for name in names
            if getattr(self, name) is not None
        ]
        if others:
            takes = "; ".join(f"{k}: {', '.join(v)}" for k, v in KIND_FIELDS.items())
            raise ValueError(
                f"{', '.join(others)} {'is' if len(others) == 1 else 'are'} not for"
                f" {'an' if self.kind == 'email' else 'a'} {self.kind} channel ({takes})"
            )
        return self


def _args(body: ChannelIn, tenant: str | None) -> dict[str, Any]:
    args = body.model_dump(mode="json", exclude_none=True)
    if tenant is not None:
        args["tenant"] = tenant
    return args


@router.get("/v1/tenants/{tenant}/notification-channels")
async def tenant_channels(
    tenant: str, who: Caller, svc: Service, cursor: PageCursor = None, limit: PageLimit = 100
) -> dict[str, Any]:
    """A tenant's channels, oldest first, a page at a time (``next_cursor`` while there may
    be more)."""
    args = {"tenant": tenant, **page(cursor, limit)}
    return await forward(svc, NOTIFY, "list_channels", args, who)


@router.post("/v1/tenants/{tenant}/notification-channels", status_code=201)
async def add_tenant_channel(
    tenant: str, body: ChannelIn, who: Caller, svc: Service
) -> dict[str, Any]:
    """Add a webhook, e-mail or push channel told of the tenant's requests."""
    return await forward(svc, NOTIFY, "add_channel", _args(body, tenant), who)


@router.get("/v1/notification-channels")
async def msp_channels(
    who: Caller, svc: Service, cursor: PageCursor = None, limit: PageLimit = 100
) -> dict[str, Any]:
    """The MSP-wide channels (told of every tenant's requests), oldest first, a page at a
    time (``next_cursor`` while there may be more)."""
    return await forward(svc, NOTIFY, "list_channels", page(cursor, limit), who)


@router.post("/v1/notification-channels", status_code=201)
async def add_msp_channel(body: ChannelIn, who: Caller, svc: Service) -> dict[str, Any]:
    """Add an MSP-wide channel."""
    return await forward(svc, NOTIFY, "add_channel", _args(body, None), who)


@router.delete("/v1/notification-channels/{channel_id}", status_code=204)
async def remove_channel(channel_id: str, who: Caller, svc: Service) -> Response:
    await forward(svc, NOTIFY, "remove_channel", {"channel_id": channel_id}, who)
    return Response(status_code=204)


@router.get("/v1/notification-channels/vapid-public-key")
async def vapid_public_key(who: Caller, svc: Service) -> dict[str, Any]:
    """The applicationServerKey browsers subscribe to web push with."""
    return await forward(svc, NOTIFY, "vapid_public_key", {}, who)
