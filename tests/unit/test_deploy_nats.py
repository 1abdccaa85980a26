"""The NATS configuration files are real: the real nats-server accepts them (-t)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from epm_cli.nats_auth import write_auth_files

from tests.certificates import issue_tls_files
from tests.unit.test_deploy_render import K8S, TARGETS, kubectl, of_kind, one, rendered, tool

BASE_CONF = K8S / "base" / "nats" / "nats.conf"
CLUSTER_CONF = K8S / "overlays" / "prod" / "nats-cluster.conf"
TLS_DIR = "/etc/nats/tls/"  # where overlays/prod mounts the epm-nats-tls Secret


def check_config(
    path: Path, pod_name: str | None = "epm-nats-0", certificates: bool = True
) -> subprocess.CompletedProcess[str]:
    # server_name comes from $POD_NAME, which the StatefulSet sets from the pod's name
    env = {k: v for k, v in os.environ.items() if k != "POD_NAME"}
    if pod_name is not None:
        env["POD_NAME"] = pod_name
    # laid out as in the pod: config/nats.conf includes ../auth/resolver.conf (the Secret
    # epm-nats-resolver), rendered here with fresh test keys by `epm nats-auth init`'s code;
    # the prod config reads its certificate from TLS_DIR (the Secret epm-nats-tls), here a
    # throwaway CA's in tls/
    root = Path(tempfile.mkdtemp(prefix="nats-conf-"))
    (root / "config").mkdir()
    conf = root / "config" / "nats.conf"
    conf.write_text(path.read_text().replace(TLS_DIR, f"{root / 'tls'}/"))
    write_auth_files(root / "auth", "/data/jwt")
    if certificates:
        issue_tls_files(root / "tls", ("epm-nats", "*.epm-nats-headless"))
    try:
        return subprocess.run(
            [tool("nats-server"), "-c", str(conf), "-t"],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
            check=False,
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def rendered_nats_conf(target: str) -> str:
    (config,) = [
        d
        for d in of_kind(rendered(target), "ConfigMap")
        if d["metadata"]["name"].startswith("epm-nats-config")
    ]
    text: str = config["data"]["nats.conf"]
    return text


@pytest.mark.parametrize("path", [BASE_CONF, CLUSTER_CONF], ids=["single", "cluster"])
def test_nats_server_accepts_the_config(path: Path) -> None:
    result = check_config(path)
    assert result.returncode == 0, result.stderr
    assert "is valid" in result.stderr + result.stdout


@pytest.mark.parametrize("target", TARGETS)
def test_the_rendered_config_map_holds_a_config_nats_accepts(target: str, tmp_path: Path) -> None:
    conf = tmp_path / "nats.conf"
    conf.write_text(rendered_nats_conf(target))
    result = check_config(conf)
    assert result.returncode == 0, result.stderr


def test_prod_uses_the_cluster_config_and_dev_the_single_server() -> None:
    assert rendered_nats_conf("overlays/prod") == CLUSTER_CONF.read_text()
    assert rendered_nats_conf("overlays/dev") == BASE_CONF.read_text()


def test_a_broken_config_is_refused() -> None:
    """-t really parses: a config without the pod name variable is rejected."""
    result = check_config(CLUSTER_CONF, pod_name=None)
    assert result.returncode != 0
    assert "POD_NAME" in result.stderr


def test_the_prod_config_loads_the_certificates_it_names() -> None:
    """-t reads the TLS files: without the epm-nats-tls Secret the server does not start."""
    assert TLS_DIR in CLUSTER_CONF.read_text()
    result = check_config(CLUSTER_CONF, certificates=False)
    assert result.returncode != 0
    assert "tls/tls.crt: no such file" in result.stderr


def test_cluster_routes_name_every_statefulset_pod() -> None:
    docs = rendered("overlays/prod")
    nats = one(docs, "StatefulSet", "epm-nats")
    service = nats["spec"]["serviceName"]
    text = CLUSTER_CONF.read_text()
    for ordinal in range(nats["spec"]["replicas"]):
        assert f"nats://epm-nats-{ordinal}.{service}:6222" in text
    assert f"nats://epm-nats-{nats['spec']['replicas']}." not in text


@pytest.mark.parametrize("path", [BASE_CONF, CLUSTER_CONF], ids=["single", "cluster"])
def test_jetstream_fsyncs_every_write(path: Path) -> None:
    """EPM_EVENTS is the only source of truth: see deploy/README.md, "Durability"."""
    assert "sync_interval: always" in path.read_text()


@pytest.mark.parametrize("path", [BASE_CONF, CLUSTER_CONF], ids=["single", "cluster"])
def test_lame_duck_ends_before_kubernetes_kills_the_server(path: Path) -> None:
    text = path.read_text()
    seconds = {
        key: int(line.split(":")[1].strip().rstrip("s"))
        for line in text.splitlines()
        for key in ("lame_duck_duration", "lame_duck_grace_period")
        if line.startswith(key + ":")
    }
    grace = one(rendered("overlays/prod"), "StatefulSet", "epm-nats")["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"
    ]
    assert sum(seconds.values()) < grace, (seconds, grace)
    assert "pid_file: /var/run/nats/nats.pid" in text


def test_prod_lets_agents_reach_nats_at_the_public_address() -> None:
    """Agents outside the cluster publish to NATS: prod opens it to them (operator mode and
    TLS guard it) and tells them where it is, not the in-cluster name."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(K8S / "overlays" / "prod")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "name: epm-nats-agents" in result.stdout
    assert "type: LoadBalancer" in result.stdout
    assert "EPM_PUBLIC_NATS_URL: tls://" in result.stdout
