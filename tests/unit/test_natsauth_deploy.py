"""Kubernetes wiring of NATS auth: every process mounts its own NATS user, NATS runs in
operator mode from the resolver Secret, and the Secrets are the files `epm nats-auth init`
writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from epm_cli.nats_auth import ADMIN, ISSUERS, write_auth_files
from epm_service.natsauth import SERVICE_GRANTS

from tests.unit.test_deploy_nats import BASE_CONF, CLUSTER_CONF
from tests.unit.test_deploy_render import TARGETS, one, pod_specs, rendered

CREDS_DIR = "/var/run/secrets/epm/nats"
ISSUER_DIR = "/var/run/secrets/epm/nats-issuer"
PROCESSES = {f"Deployment/epm-{name}": name for name in SERVICE_GRANTS} | {
    "Job/epm-streams-apply": ADMIN
}


def main_container(spec: dict[str, Any]) -> dict[str, Any]:
    """The pod's first container (NATS pods in prod also run the config reloader)."""
    container: dict[str, Any] = spec["containers"][0]
    return container


def container_env(spec: dict[str, Any]) -> dict[str, Any]:
    container = main_container(spec)
    return {e["name"]: e for e in container.get("env", [])}


def secret_volumes(spec: dict[str, Any]) -> dict[str, str]:
    """mount path -> Secret name."""
    container = main_container(spec)
    by_volume = {v["name"]: v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
    return {
        m["mountPath"]: by_volume[m["name"]]
        for m in container.get("volumeMounts", [])
        if m["name"] in by_volume
    }


@pytest.mark.parametrize("target", TARGETS)
def test_every_process_connects_with_its_own_nats_user(target: str) -> None:
    specs = dict(pod_specs(rendered(target)))
    for owner, user in PROCESSES.items():
        spec = specs[owner]
        env = container_env(spec)
        assert env["EPM_NATS_CREDS"]["value"] == f"{CREDS_DIR}/nats.creds", owner
        assert "EPM_NATS_USER" not in env and "EPM_NATS_PASSWORD" not in env, owner
        assert secret_volumes(spec)[CREDS_DIR] == f"epm-nats-{user}", owner


@pytest.mark.parametrize("target", TARGETS)
def test_only_request_svc_and_the_gateway_may_sign_nats_users(target: str) -> None:
    specs = dict(pod_specs(rendered(target)))
    for owner, user in PROCESSES.items():
        env = container_env(specs[owner])
        mounts = secret_volumes(specs[owner])
        if user in ISSUERS:
            assert env["EPM_NATS_ISSUER"]["value"] == f"{ISSUER_DIR}/issuer.json"
            assert mounts[ISSUER_DIR] == f"epm-nats-issuer-{user}"
        else:
            assert "EPM_NATS_ISSUER" not in env and ISSUER_DIR not in mounts, owner


@pytest.mark.parametrize("target", TARGETS)
def test_nats_runs_in_operator_mode_from_the_resolver_secret(target: str) -> None:
    nats = one(rendered(target), "StatefulSet", "epm-nats")
    spec = nats["spec"]["template"]["spec"]
    assert secret_volumes(spec)["/etc/nats/auth"] == "epm-nats-resolver"
    container = main_container(spec)
    assert container["args"] == ["--config", "/etc/nats/config/nats.conf"]


@pytest.mark.parametrize("path", [BASE_CONF, CLUSTER_CONF], ids=["single", "cluster"])
def test_the_nats_config_includes_the_resolver_and_allows_no_anonymous_user(path: Path) -> None:
    text = path.read_text()
    assert 'include "../auth/resolver.conf"' in text
    for open_door in ("no_auth_user", "authorization", "accounts {"):
        assert open_door not in text


TLS_SECRET = "epm-nats-tls"  # the certificate (deploy/README.md, "TLS"), not nats auth init's


def test_the_secrets_are_the_files_nats_auth_init_writes(tmp_path: Path) -> None:
    files = write_auth_files(tmp_path / "auth", "/data/jwt")
    referenced = {
        name
        for _, spec in pod_specs(rendered("overlays/prod"))
        for name in secret_volumes(spec).values()
        if name.startswith("epm-nats-") and name != TLS_SECRET
    }
    expected = {f"epm-nats-{user}" for user in PROCESSES.values()}
    expected |= {f"epm-nats-issuer-{service}" for service in ISSUERS}
    expected.add("epm-nats-resolver")
    assert referenced == expected
    for user in PROCESSES.values():
        assert files.creds(user).exists()
    for service in ISSUERS:
        issuer = files.issuer(service)
        assert issuer is not None and issuer.exists()
    assert files.resolver_conf.exists()


def test_nats_auth_init_writes_the_files_once_and_keeps_the_keys(tmp_path: Path) -> None:
    import orjson
    from epm_cli.main import app
    from epm_service.natsauth import AuthKeys
    from typer.testing import CliRunner

    out = tmp_path / "nats-auth"
    first = CliRunner().invoke(app, ["nats-auth", "init", "--out", str(out), "--json"])
    assert first.exit_code == 0, first.output
    listed = orjson.loads(first.output)["files"]
    assert "keys.json" in listed and "resolver.conf" in listed and "admin.creds" in listed
    account = AuthKeys.load(out / "keys.json").account.public
    assert orjson.loads(first.output)["account"] == account  # what KEDA's ScaledObject names
    again = CliRunner().invoke(app, ["nats-auth", "init", "--out", str(out), "--json"])
    assert again.exit_code == 0, again.output
    assert AuthKeys.load(out / "keys.json").account.public == account
    assert "NKEY SEED" not in first.output + again.output  # secrets go to files only
