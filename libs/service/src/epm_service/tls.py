"""TLS from settings: the NATS client's SSL context, the gateway's HTTPS certificate, and
the NATS CA request-svc hands agents at enrollment.

They all come from files (on Kubernetes, Secrets mounted into the pod: deploy/README.md,
"TLS"). A file that is missing, unreadable or not what the setting says stops the
process at start with the setting's name in the message, not at the first handshake.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import ssl
from pathlib import Path

from epm_service.settings import Settings, env_name

log = logging.getLogger(__name__)

_SSL_SOURCE = re.compile(r" \(_ssl\.c:\d+\)$")


class TlsSettingsError(ValueError):
    """A TLS setting that cannot be used; the message names the setting and what to do."""


def nats_client_context(settings: Settings) -> ssl.SSLContext | None:
    """The context for ``nats.connect(tls=...)``, or None when no NATS TLS file is set
    (then a ``tls://`` URL, or a server that requires TLS, uses the system's CAs)."""
    pair = _pair(settings, "nats_tls_cert", "nats_tls_key")
    if settings.nats_tls_ca is None and pair is None:
        return None
    if settings.nats_tls_ca is None:
        context = ssl.create_default_context()
    else:
        # only this CA: the servers' certificate comes from it, and no public CA may vouch
        # for a NATS server
        _, context = _ca_file("nats_tls_ca", settings.nats_tls_ca)
    if pair is not None:
        _load_pair(context, "nats_tls_cert", "nats_tls_key", *pair)
    return context


def only_ca_context(ca_pem: str) -> ssl.SSLContext:
    """A client context that trusts only the CA certificate(s) in ``ca_pem`` (PEM text) and
    checks the server's certificate and host name. ValueError, saying why, when the text
    holds no PEM certificate. The agent uses it too, for the CA in its state dir."""
    if not ca_pem.isascii():
        raise ValueError(
            "not PEM text: a binary (DER?) file; 'openssl x509 -inform der' converts it"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cadata=ca_pem)
    except ssl.SSLError as exc:
        raise ValueError(exc.reason or _SSL_SOURCE.sub("", str(exc.args[-1]))) from exc
    except ValueError as exc:  # "Empty certificate data"
        raise ValueError(str(exc)) from exc
    return context


def public_nats_ca(settings: Settings) -> str | None:
    """``EPM_PUBLIC_NATS_CA``: the PEM text request-svc hands agents at enrollment (the
    answer's ``nats.ca``), checked to hold a certificate, or None."""
    if settings.public_nats_ca is None:
        return None
    pem, _ = _ca_file("public_nats_ca", settings.public_nats_ca)
    return pem


def https_files(settings: Settings) -> tuple[Path, Path] | None:
    """``EPM_HTTP_TLS_CERT`` and ``EPM_HTTP_TLS_KEY``, checked to be a certificate and its
    key, or None (plain HTTP)."""
    pair = _pair(settings, "http_tls_cert", "http_tls_key")
    if pair is not None:
        _load_pair(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), "http_tls_cert", "http_tls_key", *pair)
    return pair


def _pair(settings: Settings, cert_field: str, key_field: str) -> tuple[Path, Path] | None:
    cert: Path | None = getattr(settings, cert_field)
    key: Path | None = getattr(settings, key_field)
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        given, missing = (cert_field, key_field) if key is None else (key_field, cert_field)
        raise TlsSettingsError(
            f"{env_name(given)} is set but {env_name(missing)} is not:"
            " set both (the certificate and its private key) or neither"
        )
    return _readable(cert_field, cert), _readable(key_field, key)


def _readable(field: str, path: Path) -> Path:
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise TlsSettingsError(
            f"{env_name(field)}={path}: cannot read it ({exc.strerror});"
            " mount the file there or change the setting"
        ) from exc
    return path


def _ca_file(field: str, path: Path) -> tuple[str, ssl.SSLContext]:
    """The PEM text of a CA file setting and a context that trusts only it."""
    try:
        pem = path.read_bytes().decode("ascii", errors="replace")
    except OSError as exc:
        raise TlsSettingsError(
            f"{env_name(field)}={path}: cannot read it ({exc.strerror});"
            " mount the file there or change the setting"
        ) from exc
    try:
        context = only_ca_context(pem)
    except ValueError as exc:
        raise TlsSettingsError(
            f"{env_name(field)}={path} holds no PEM CA certificate ({exc}):"
            " point it at the CA that signed the NATS servers' certificate (ca.crt)"
        ) from exc
    return pem, context


def _load_pair(
    context: ssl.SSLContext, cert_field: str, key_field: str, cert: Path, key: Path
) -> None:
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except ssl.SSLError as exc:
        raise TlsSettingsError(
            f"{env_name(cert_field)}={cert} and {env_name(key_field)}={key} are not a PEM"
            f" certificate and its unencrypted private key ({exc.reason or exc})"
        ) from exc


class CertificateReload:
    """A certificate and key that a live server context serves, loaded again when either
    file changes on disk: a renewed certificate (cert-manager rewrites the mounted Secret
    30 days before expiry) is served from the next handshake on, with no restart.
    Connections open keep the certificate they began with. A replacement that cannot be
    loaded (a half-written pair, say) is logged and the context keeps the certificate it
    has; the next change is tried again."""

    def __init__(self, context: ssl.SSLContext, cert: Path, key: Path, what: str) -> None:
        self.context = context
        self.cert = cert
        self.key = key
        self.what = what
        self._stamp = self._files_stamp()

    def _files_stamp(self) -> tuple[tuple[int, int, int], ...]:
        """Inode, size and modification time of both files, through symlinks (a Secret's
        files are links into a directory the kubelet swaps at once)."""
        stamps = []
        for path in (self.cert, self.key):
            try:
                st = os.stat(path)
            except OSError:
                stamps.append((0, 0, 0))
                continue
            stamps.append((st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(stamps)

    def check(self) -> bool:
        """Load the files again if they changed since the last look; True if loaded."""
        stamp = self._files_stamp()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            self.context.load_cert_chain(certfile=str(self.cert), keyfile=str(self.key))
        except (OSError, ssl.SSLError) as exc:
            log.warning(
                "the %s files changed but cannot be loaded; still serving the certificate"
                " loaded before: %s",
                self.what,
                getattr(exc, "reason", None) or exc,
                extra={"cert": str(self.cert), "key": str(self.key)},
            )
            return False
        log.info("reloaded the %s certificate", self.what, extra={"cert": str(self.cert)})
        return True


async def reload_certificates(reloads: list[CertificateReload], every: float) -> None:
    """Look at the files every ``every`` seconds (``EPM_TLS_RELOAD_SECONDS``), forever."""
    while True:
        await asyncio.sleep(every)
        for reload in reloads:
            reload.check()
