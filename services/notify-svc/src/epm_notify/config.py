"""notify-svc's own settings, ``EPM_NOTIFY_*`` (the shared ones are epm_service.settings)."""

from __future__ import annotations

from epm_service.settings import parse_duration
from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from epm_notify.retry import RetryPolicy


class NotifySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EPM_NOTIFY_", extra="ignore")

    # 16 tries at 2s doubling to 10m apart (equal jitter): a receiver may be down for
    # 40-75 minutes and still get every notification
    max_attempts: int = 16
    retry_base: float = 2.0  # seconds; accepts 500ms as 0.5, or 2s, 1m
    retry_cap: float = 600.0
    http_timeout: float = 5.0  # a whole webhook or push try
    connect_timeout: float = 2.0
    smtp_timeout: float = 10.0
    per_channel_concurrency: int = 16  # tries in flight to one channel
    max_in_flight: int = 1000  # tries in flight in all
    max_age: float = 86400.0  # older events are not announced (a first start on old history)
    vapid_subject: str = "mailto:epm@localhost"
    mail_from: str = "EPM <epm@localhost>"
    # webhooks and push endpoints on loopback, private, link-local addresses (a lab, a
    # developer machine); off, such URLs are refused when added and when resolved
    allow_private_webhooks: bool = False

    @field_validator("retry_base", "retry_cap", "max_age", mode="before")
    @classmethod
    def _duration(cls, v: str | float) -> float:
        return parse_duration(v)

    @property
    def retry(self) -> RetryPolicy:
        return RetryPolicy(self.max_attempts, self.retry_base, self.retry_cap)
