"""notify-svc commands (docs/internal-contracts.md, "notify-svc commands"), thin over the store."""

from __future__ import annotations

from typing import Any, cast

from epm_events.catalog import NotificationChannelAdded, NotificationChannelRemoved
from epm_events.ids import new_id, validate_tenant
from epm_service.errors import NotFound
from epm_service.paging import next_page, page_limit, start_after
from epm_service.principal import Principal
from epm_service.publisher import ConcurrencyConflict
from epm_service.rpc import CommandHandler
from epm_service.runtime import ServiceContext
from epm_service.secretbox import SecretBox
from epm_service.tenants import tenant_exists

from epm_notify import store
from epm_notify.channels import MSP_WIDE, Rules, authorize, new_channel, scope_of
from epm_notify.config import NotifySettings
from epm_notify.dispatcher import channel_context
from epm_notify.store import NotifyStore
from epm_notify.vapid import application_server_key, vapid_key

CHANNEL_CURSOR = "channels"  # the channel lists' cursors (epm_service.paging)


class NotifyCommands:
    def __init__(
        self, ctx: ServiceContext, box: SecretBox, cfg: NotifySettings | None = None
    ) -> None:
        self.ctx = ctx
        self.box = box
        self.store = ctx.projector(NotifyStore.name)
        cfg = cfg or NotifySettings()
        self.rules = Rules(
            allow_private_hosts=cfg.allow_private_webhooks,
            smtp_configured=bool(ctx.settings.smtp_url),
        )

    def table(self) -> dict[str, CommandHandler]:
        return {
            "add_channel": self.add_channel,
            "list_channels": self.list_channels,
            "remove_channel": self.remove_channel,
            "vapid_public_key": self.vapid_public_key,
        }

    async def _scope(self, args: dict[str, Any], p: Principal) -> str:
        scope = scope_of(args)
        if scope != MSP_WIDE:
            validate_tenant(scope, allow_global=False)
        authorize(p, scope)
        if scope != MSP_WIDE and not await self.store.read(lambda c: tenant_exists(c, scope)):
            raise NotFound(f"tenant {scope!r} not found; create it first (epm tenant create)")
        return scope

    async def add_channel(self, args: dict[str, Any], p: Principal) -> dict[str, Any]:
        scope = await self._scope(args, p)
        spec = new_channel(args, self.rules)
        channel_id = new_id("ch")
        sealed = (
            None
            if spec.secret is None
            else self.box.seal_text(spec.secret, channel_context(channel_id))
        )
        event = NotificationChannelAdded(
            channel_id=channel_id,
            kind=spec.kind,
            target=spec.target,
            secret_ciphertext=sealed,
            added_by=p.actor,
        )
        appended = await self.ctx.publisher.append(scope, [event], 0)
        await self.store.wait_for(appended[-1].seq)
        channel = await self.store.read(lambda c: store.get_channel(c, channel_id))
        assert channel is not None
        view = channel.view()
        if spec.shown_secret is not None:
            view["secret"] = spec.shown_secret  # shown once; only its ciphertext is kept
        return view

    async def list_channels(self, args: dict[str, Any], p: Principal) -> dict[str, Any]:
        scope = await self._scope(args, p)
        limit = page_limit(args)
        # decode_cursor checked the key's shape: (str, str) is a ChannelKey
        after = cast("store.ChannelKey | None", start_after(CHANNEL_CURSOR, args, (str, str)))
        channels = await self.store.read(lambda c: store.list_channels(c, scope, after, limit))
        return {
            "items": [ch.view() for ch in channels],
            **next_page(CHANNEL_CURSOR, channels, limit, store.channel_key),
        }

    async def remove_channel(self, args: dict[str, Any], p: Principal) -> dict[str, Any]:
        channel_id = str(args.get("channel_id") or "")
        channel = await self.store.read(lambda c: store.get_channel(c, channel_id))
        if channel is None:
            raise NotFound(f"channel {channel_id!r} not found")
        authorize(p, channel.tenant, existing=True)
        event = NotificationChannelRemoved(channel_id=channel_id, removed_by=p.actor)
        try:
            appended = await self.ctx.publisher.append(channel.tenant, [event], channel.last_seq)
        except ConcurrencyConflict:
            raise NotFound(f"channel {channel_id!r} not found (it was just removed)") from None
        await self.store.wait_for(appended[-1].seq)
        return {}

    async def vapid_public_key(self, args: dict[str, Any], p: Principal) -> dict[str, Any]:
        """For browsers to subscribe (``applicationServerKey``); public by nature."""
        return {"public_key": application_server_key(vapid_key(self.box))}
