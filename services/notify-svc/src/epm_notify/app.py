"""notify-svc: notification channels, who is told what, retries and delivery records.

Where things go (the handler table of this service):

- projection ``store`` (epm_notify.store.NotifyStore), from EPM_EVENTS:
  TenantCreated; NotificationChannelAdded / NotificationChannelRemoved
  (channels, per tenant and MSP-wide ``_global``); RequestCreated -> a pending
  delivery per channel of the tenant and of the MSP; Approved, Denied,
  RequestExpired -> follow-ups (epm_notify.notices says who is told what);
  NotificationSent / NotificationFailed -> the delivery is closed.
- dispatcher (epm_notify.dispatcher.Dispatcher): pending deliveries ->
  webhook (epm_notify.webhook), e-mail (epm_notify.mail), web push
  (epm_notify.push); then NotificationSent, or after the last try
  NotificationFailed + EPM_DLQ ``epm.dlq.notify-svc``.
- commands ``epm.rpc.notify-svc.*`` (epm_notify.commands.NotifyCommands):
  add_channel, list_channels, remove_channel, vapid_public_key.

Why a projection plus a delivery schedule, not a durable consumer with acks:
the pending deliveries are then state rebuilt from the stream like any other
projection (delete the file and nothing already sent is sent again, nothing
pending is forgotten), retries wait in the schedule rather than in redelivery
timers, and one slow channel never holds back an ack that others wait behind.
"""

from __future__ import annotations

import contextlib

import aiohttp
from epm_service.runtime import ServiceContext, ServiceDefinition, main
from epm_service.secretbox import SecretBox

from epm_notify.commands import NotifyCommands
from epm_notify.config import NotifySettings
from epm_notify.dispatcher import Dispatcher
from epm_notify.mail import MailSender, SmtpServer
from epm_notify.push import PushSender
from epm_notify.store import NotifyStore
from epm_notify.vapid import vapid_signer

NAME = "notify-svc"


def secret_box(ctx: ServiceContext) -> SecretBox:
    return SecretBox.from_master_key(ctx.settings.master_key, ctx.settings.previous_master_keys)


class HttpClient:
    """The HTTP session the webhook and push senders share, closed with the service.

    It resolves host names with PublicOnlyResolver: nothing is sent to a name that resolves
    to a non-public address (with EPM_NOTIFY_ALLOW_PRIVATE_WEBHOOKS, to a link-local one).
    """

    def __init__(self, cfg: NotifySettings) -> None:
        self.cfg = cfg
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "start() first"
        return self._session

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(
            total=self.cfg.http_timeout, connect=self.cfg.connect_timeout
        )
        from epm_notify.webhook import PublicOnlyResolver

        connector = aiohttp.TCPConnector(
            limit=200,
            limit_per_host=self.cfg.per_channel_concurrency,
            resolver=PublicOnlyResolver(allow_private=self.cfg.allow_private_webhooks),
        )
        self._session = aiohttp.ClientSession(timeout=timeout, connector=connector)

    async def stop(self) -> None:
        if self._session is not None:
            with contextlib.suppress(Exception):
                await self._session.close()


async def start_workers(ctx: ServiceContext) -> None:
    from epm_notify.webhook import WebhookSender

    cfg = NotifySettings()
    box = secret_box(ctx)
    http = HttpClient(cfg)
    smtp = SmtpServer.parse(ctx.settings.smtp_url) if ctx.settings.smtp_url else None
    private = cfg.allow_private_webhooks
    await ctx.start_worker(http)
    await ctx.start_worker(
        Dispatcher(
            ctx.bus.js,
            ctx.publisher,
            ctx.projector(NotifyStore.name),
            box,
            {
                "webhook": WebhookSender(http.session, allow_private=private),
                "email": MailSender(smtp, cfg.mail_from, cfg.smtp_timeout),
                "push": PushSender(
                    http.session, vapid_signer(box), cfg.vapid_subject, allow_private=private
                ),
            },
            cfg.retry,
            per_channel=cfg.per_channel_concurrency,
            max_in_flight=cfg.max_in_flight,
            max_age=cfg.max_age,
        )
    )


DEFINITION = ServiceDefinition(
    name=NAME,
    projections=[lambda ctx: NotifyStore(ctx.settings.public_url)],
    commands=lambda ctx: NotifyCommands(ctx, secret_box(ctx), NotifySettings()).table(),
    on_start=start_workers,
)


def run() -> None:
    main(DEFINITION)
