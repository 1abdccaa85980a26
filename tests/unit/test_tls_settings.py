"""EPM_NATS_TLS_*, EPM_HTTP_TLS_* and EPM_PUBLIC_NATS_CA: what a process builds from them,
and the errors an operator sees when a file is missing or wrong (epm_service.tls)."""

from __future__ import annotations

import os
import re
import ssl
from pathlib import Path

import pytest
from epm_service.settings import Settings
from epm_service.tls import (
    TlsSettingsError,
    https_files,
    nats_client_context,
    only_ca_context,
    public_nats_ca,
)

from tests.certificates import TlsFiles, issue_tls_files


@pytest.fixture
def files(tmp_path: Path) -> TlsFiles:
    return issue_tls_files(tmp_path / "tls")


def test_the_settings_come_from_the_environment(
    files: TlsFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EPM_NATS_TLS_CA", str(files.ca))
    monkeypatch.setenv("EPM_NATS_TLS_CERT", str(files.cert))
    monkeypatch.setenv("EPM_NATS_TLS_KEY", str(files.key))
    monkeypatch.setenv("EPM_HTTP_TLS_CERT", str(files.cert))
    monkeypatch.setenv("EPM_HTTP_TLS_KEY", str(files.key))
    settings = Settings()
    assert (settings.nats_tls_ca, settings.nats_tls_cert, settings.nats_tls_key) == (
        files.ca,
        files.cert,
        files.key,
    )
    assert https_files(settings) == (files.cert, files.key)


def test_without_tls_settings_nothing_changes() -> None:
    settings = Settings()
    assert nats_client_context(settings) is None
    assert https_files(settings) is None


def test_a_ca_gives_a_context_that_verifies_the_server_against_it_only(files: TlsFiles) -> None:
    context = nats_client_context(Settings(nats_tls_ca=files.ca))
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    (ca,) = context.get_ca_certs()
    assert (("commonName", "EPM test CA"),) in ca["subject"]


def test_a_missing_ca_file_names_the_setting(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "ca.crt"
    with pytest.raises(
        TlsSettingsError, match=re.escape(f"EPM_NATS_TLS_CA={missing}: cannot read it")
    ):
        nats_client_context(Settings(nats_tls_ca=missing))


def test_a_ca_file_that_is_not_a_certificate_is_refused(files: TlsFiles) -> None:
    with pytest.raises(TlsSettingsError, match=r"EPM_NATS_TLS_CA=.* holds no PEM CA certificate"):
        nats_client_context(Settings(nats_tls_ca=files.key))


def test_the_ca_handed_to_agents_is_read_and_checked(
    files: TlsFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert public_nats_ca(Settings()) is None
    monkeypatch.setenv("EPM_PUBLIC_NATS_CA", str(files.ca))
    pem = public_nats_ca(Settings())
    assert pem == files.ca.read_text()
    (ca,) = only_ca_context(pem).get_ca_certs()
    assert (("commonName", "EPM test CA"),) in ca["subject"]

    missing = tmp_path / "absent.crt"
    with pytest.raises(TlsSettingsError, match=re.escape(f"EPM_PUBLIC_NATS_CA={missing}: cannot")):
        public_nats_ca(Settings(public_nats_ca=missing))
    with pytest.raises(
        TlsSettingsError, match=r"EPM_PUBLIC_NATS_CA=.* holds no PEM CA certificate"
    ):
        public_nats_ca(Settings(public_nats_ca=files.key))


def test_a_certificate_without_its_key_is_refused(files: TlsFiles) -> None:
    with pytest.raises(
        TlsSettingsError, match="EPM_NATS_TLS_CERT is set but EPM_NATS_TLS_KEY is not"
    ):
        nats_client_context(Settings(nats_tls_ca=files.ca, nats_tls_cert=files.cert))
    with pytest.raises(
        TlsSettingsError, match="EPM_HTTP_TLS_KEY is set but EPM_HTTP_TLS_CERT is not"
    ):
        https_files(Settings(http_tls_key=files.key))


def test_a_key_that_does_not_belong_to_the_certificate_is_refused(
    files: TlsFiles, tmp_path: Path
) -> None:
    other = issue_tls_files(tmp_path / "other")
    with pytest.raises(
        TlsSettingsError, match=r"EPM_HTTP_TLS_CERT=.* and EPM_HTTP_TLS_KEY=.* are not a PEM"
    ):
        https_files(Settings(http_tls_cert=files.cert, http_tls_key=other.key))


def test_an_unreadable_key_names_the_setting(files: TlsFiles) -> None:
    files.key.chmod(0o000)
    if os.access(files.key, os.R_OK):
        pytest.skip("running as root: every file is readable")
    with pytest.raises(TlsSettingsError, match=r"EPM_HTTP_TLS_KEY=.*: cannot read it"):
        https_files(Settings(http_tls_cert=files.cert, http_tls_key=files.key))
