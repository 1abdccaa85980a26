"""Settings from ``EPM_*`` environment variables (flags override by setting them)."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: str | float | int) -> float:
    """``30s``, ``10m``, ``4d`` or plain seconds -> seconds."""
    if isinstance(value, int | float):
        return float(value)
    m = _DURATION.match(value)
    if not m:
        raise ValueError(f"invalid duration {value!r}: use a number with s, m, h or d, e.g. '4d'")
    return float(m.group(1)) * _UNIT[m.group(2)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EPM_", extra="ignore")

    nats_url: str = "nats://127.0.0.1:4222"
    nats_user: str | None = None
    nats_password: str | None = None
    nats_creds: str | None = None
    nats_issuer: str | None = None  # epm_service.natsauth.Issuer file: who may sign NATS users
    public_nats_url: str | None = None  # what agents are told to connect to
    # a PEM CA file request-svc hands agents at enrollment (the answer's nats.ca): they
    # trust only it for NATS (epm_service.tls.public_nats_ca)
    public_nats_ca: Path | None = None
    # TLS to NATS (epm_service.tls): the CA that signed the servers' certificate (a tls://
    # EPM_NATS_URL without it trusts the system's CAs), and a client certificate and key
    # for servers that verify clients.
    nats_tls_ca: Path | None = None
    nats_tls_cert: Path | None = None
    nats_tls_key: Path | None = None
    data_dir: Path = Path(".epm")
    stream_replicas: int = 1
    request_ttl: float = 4 * 86400
    # worker processes request-svc prepares offline log uploads in (checks, decisions,
    # encoding: epm_request.upload_prep); 0 prepares them on its event loop
    replay_workers: int = 1
    master_key: str | None = None
    # Earlier master keys, comma-separated: they still open what they sealed, never seal.
    master_key_previous: str | None = None
    smtp_url: str | None = None
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    # both set: the gateway serves HTTPS on EPM_HTTP_PORT with this certificate and key
    http_tls_cert: Path | None = None
    http_tls_key: Path | None = None
    # how often the gateway looks whether its certificate files were renewed (then it
    # serves the new one from the next handshake on; epm_service.tls.CertificateReload)
    tls_reload_seconds: float = 60.0
    health_port: int = 0  # 0: a free port (written to the log)
    log_level: str = "INFO"
    public_url: str = "http://127.0.0.1:8080"
    bootstrap_token_file: Path | None = None

    @field_validator("request_ttl", mode="before")
    @classmethod
    def _ttl(cls, v: str | float) -> float:
        return parse_duration(v)

    @property
    def previous_master_keys(self) -> list[str]:
        """``EPM_MASTER_KEY_PREVIOUS`` as a list (keys are base64 or hex: no commas in them)."""
        return [k.strip() for k in (self.master_key_previous or "").split(",") if k.strip()]

    def db_path(self, name: str) -> Path:
        return self.data_dir / f"{name}.sqlite"


def env_name(field: str, settings: type[BaseSettings] = Settings) -> str:
    """The environment variable of a settings field (``nats_creds`` -> ``EPM_NATS_CREDS``),
    of ``Settings`` or another settings class (its own prefix): what a message names."""
    return f"{settings.model_config.get('env_prefix', '')}{field}".upper()
