"""A private CA for NATS: the agent trusts only the CA kept in its state dir.

``epm-agent enroll --nats-ca FILE`` (or ``$EPM_AGENT_NATS_CA``), else the enrollment
answer's ``nats.ca`` (request-svc's ``EPM_PUBLIC_NATS_CA``), is stored as
``nats-ca.pem`` (``StateDir.nats_ca_path``); every later connection to NATS then trusts that CA instead of the
system's, checking the server's certificate and host name. Without the file a
``tls://`` URL (or a server that requires TLS) is checked against the system's CAs.
To add or replace the CA of an enrolled agent, write the PEM file there.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from epm_service.tls import only_ca_context

from epm_agent.errors import AgentError
from epm_agent.private_file import write_private_file

NATS_CA_ENV = "EPM_AGENT_NATS_CA"


class UntrustedServer(AgentError):
    """The NATS server's certificate does not verify: a configuration to fix, not an
    outage to wait out (the agent does not fall back to offline for it)."""


def read_ca_file(path: Path) -> str:
    """The PEM text of a CA file given to ``enroll``, checked to hold a certificate."""
    what = f"the NATS CA file {path} (--nats-ca, ${NATS_CA_ENV})"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AgentError(
            f"{what}: cannot read it ({exc.strerror or exc}); give the PEM file of the CA "
            "that signed the NATS servers' certificate"
        ) from None
    pem = data.decode("ascii", errors="replace")
    check_ca(pem, what)
    return pem


def check_ca(pem: str, what: str) -> ssl.SSLContext:
    """A context trusting only this CA; AgentError naming ``what`` when it holds none."""
    try:
        return only_ca_context(pem)
    except ValueError as exc:
        raise AgentError(
            f"{what} holds no PEM CA certificate ({exc}); it must be the CA that signed the "
            "NATS servers' certificate (ca.crt, '-----BEGIN CERTIFICATE-----')"
        ) from None


def save_ca(path: Path, pem: str | None) -> None:
    """Keep the CA in the state dir (or make sure none is left from an earlier attempt)."""
    if pem is None:
        path.unlink(missing_ok=True)
    else:
        write_private_file(path, pem.encode())


def stored_context(path: Path) -> ssl.SSLContext | None:
    """The context for connecting to NATS: trusting only the CA stored at ``path``, or None
    (no CA stored: nats-py checks a TLS server against the system's CAs)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AgentError(
            f"cannot read the NATS CA {path} ({exc.strerror or exc}); make it readable, or "
            "remove it to trust the system's CAs"
        ) from None
    return check_ca(
        data.decode("ascii", errors="replace"),
        f"the NATS CA {path} (remove it to trust the system's CAs, or replace it)",
    )


def untrusted(nats_url: str, path: Path, exc: ssl.SSLCertVerificationError) -> UntrustedServer:
    """What to say when the server's certificate does not verify (``path``: where the
    agent keeps its NATS CA)."""
    reason = exc.verify_message or exc.reason or str(exc)
    if path.exists():
        advice = (
            f"this agent trusts only the CA in {path}: it did not sign that certificate, or "
            "the certificate does not name that host; ask the EPM operator for the right CA "
            "and write it there"
        )
    else:
        advice = (
            "this agent trusts the system's CAs only; enroll with --nats-ca FILE (the CA "
            f"that signed the NATS servers' certificate), or write that CA to {path}"
        )
    return UntrustedServer(
        f"the NATS server at {nats_url} showed a certificate this agent does not trust "
        f"(certificate verify failed: {reason}); {advice}"
    )
