"""The agent's NATS CA (epm_agent.nats_tls): what it trusts, and what it says when it
cannot. Over a real TLS nats-server: tests/integration/test_agent_tls.py."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from epm_agent.cli import build_parser
from epm_agent.errors import AgentError
from epm_agent.nats_tls import UntrustedServer, save_ca, stored_context, untrusted

from tests.certificates import issue_tls_files


def test_the_stored_ca_is_the_only_one_trusted_and_host_names_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "nats-ca.pem"
    assert stored_context(path) is None  # none stored: the system's CAs (nats-py's default)

    save_ca(path, issue_tls_files(tmp_path / "tls").ca.read_text())
    context = stored_context(path)
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    (ca,) = context.get_ca_certs()
    assert (("commonName", "EPM test CA"),) in ca["subject"]

    save_ca(path, None)
    assert not path.exists()


def test_a_broken_stored_ca_says_where_it_is(tmp_path: Path) -> None:
    path = tmp_path / "nats-ca.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
    with pytest.raises(AgentError, match=f"the NATS CA {path} .* holds no PEM CA certificate"):
        stored_context(path)


def test_an_untrusted_certificate_says_what_to_do(tmp_path: Path) -> None:
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    exc.verify_message = "self-signed certificate in certificate chain"
    path = tmp_path / "nats-ca.pem"
    error = untrusted("tls://nats.example:4222", path, exc)
    assert isinstance(error, UntrustedServer) and isinstance(error, AgentError)
    assert "tls://nats.example:4222 showed a certificate this agent does not trust" in str(error)
    assert "self-signed certificate in certificate chain" in str(error)
    assert "enroll with --nats-ca FILE" in str(error)

    path.write_text("a CA")
    assert f"trusts only the CA in {path}" in str(untrusted("tls://n:4222", path, exc))


def test_enroll_and_simulate_take_nats_ca(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    args = parser.parse_args(["enroll", "--url", "u", "--enrollment-token", "t", "--nats-ca", "c"])
    assert args.nats_ca == Path("c")
    argv = ["simulate", "--url", "u", "--token", "t", "--tenant", "a", "--devices", "1"]
    assert parser.parse_args([*argv, "--events", "1"]).nats_ca is None
    with pytest.raises(SystemExit):
        parser.parse_args(["enroll", "--help"])
    assert "EPM_AGENT_NATS_CA" in capsys.readouterr().out
