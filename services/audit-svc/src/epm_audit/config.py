"""audit-svc settings, from ``EPM_AUDIT_*`` environment variables."""

from __future__ import annotations

from epm_service.settings import parse_duration
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from epm_audit.checkpoint import CheckpointPolicy


class AuditSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EPM_AUDIT_", extra="ignore")

    checkpoint_records: int = Field(default=1000, ge=1)
    """EPM_AUDIT_CHECKPOINT_RECORDS: sign a chain after this many new records."""
    checkpoint_interval: float = Field(default=60.0, gt=0)
    """EPM_AUDIT_CHECKPOINT_INTERVAL (``30s``, ``5m``): sign a chain with new records this often."""

    @field_validator("checkpoint_interval", mode="before")
    @classmethod
    def _interval(cls, v: str | float) -> float:
        return parse_duration(v)

    @property
    def policy(self) -> CheckpointPolicy:
        return CheckpointPolicy(self.checkpoint_records, self.checkpoint_interval)
