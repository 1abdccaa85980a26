"""Every setting the code reads is in deploy/README.md's "Settings" table, and the table
names no setting the code does not read."""

from __future__ import annotations

import re
from pathlib import Path

from epm_audit.config import AuditSettings
from epm_gateway.hardening import HardeningSettings
from epm_notify.config import NotifySettings
from epm_service.settings import Settings, env_name
from pydantic_settings import BaseSettings

README = Path(__file__).parents[2] / "deploy" / "README.md"
CLASSES: tuple[type[BaseSettings], ...] = (
    Settings,
    HardeningSettings,
    AuditSettings,
    NotifySettings,
)


def variables() -> set[str]:
    return {env_name(name, cls) for cls in CLASSES for name in cls.model_fields}


def table() -> str:
    text = README.read_text()
    return text[text.index("## Settings") : text.index("## Security settings")]


def test_every_setting_is_documented() -> None:
    missing = sorted(v for v in variables() if f"`{v}`" not in table())
    assert not missing, f"add to deploy/README.md, 'Settings': {missing}"


def test_the_table_names_only_settings_the_code_reads() -> None:
    named = set(re.findall(r"`(EPM_[A-Z0-9_]+)`", table()))
    assert named <= variables(), sorted(named - variables())
