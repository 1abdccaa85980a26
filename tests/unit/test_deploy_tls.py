"""TLS in overlays/prod: NATS (clients and routes) and the gateway serve TLS with
certificates from Secrets, every client trusts the CA, every Secret is documented, and
components/cert-manager issues exactly those Secrets (deploy/README.md, "TLS")."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import yaml

from tests.unit.test_deploy_nats import CLUSTER_CONF, TLS_DIR
from tests.unit.test_deploy_render import (
    K8S,
    Doc,
    epm_config,
    kubectl,
    of_kind,
    one,
    pod_specs,
    rendered,
)

NATS_SECRET = "epm-nats-tls"
GATEWAY_SECRET = "epm-gateway-internal-tls"
README = K8S.parent / "README.md"
INGRESS = "nginx.ingress.kubernetes.io/"


def first_container(doc: Doc) -> tuple[Doc, Doc]:
    pod: Doc = doc["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


def secret_behind(pod: Doc, container: Doc, path: str) -> Doc:
    """The secret volume mounted where ``path`` lives."""
    (mount,) = [
        m for m in container["volumeMounts"] if PurePosixPath(path).is_relative_to(m["mountPath"])
    ]
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert "secret" in volume, f"{path} is not on a Secret"
    secret: Doc = volume["secret"]
    return secret


def env_of(container: Doc) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def tls_files(block: str) -> dict[str, str]:
    return dict(re.findall(r'^\s*(cert_file|key_file|ca_file): "([^"]+)"', block, re.M))


def test_prod_nats_requires_tls_of_clients_and_routes() -> None:
    text = CLUSTER_CONF.read_text()
    client = re.search(r"^tls \{\n(.*?)^\}", text, re.M | re.S)
    route = re.search(r"^cluster \{.*?^  tls \{\n(.*?)^  \}", text, re.M | re.S)
    assert client and route, "nats-cluster.conf: no tls block for clients or for routes"
    assert "verify: true" in route.group(1), "routes must verify each other's certificate"
    expected = {
        "cert_file": f"{TLS_DIR}tls.crt",
        "key_file": f"{TLS_DIR}tls.key",
        "ca_file": f"{TLS_DIR}ca.crt",
    }
    assert tls_files(client.group(1)) == expected
    assert tls_files(route.group(1)) == expected
    pod, nats = first_container(one(rendered("overlays/prod"), "StatefulSet", "epm-nats"))
    assert secret_behind(pod, nats, f"{TLS_DIR}tls.crt")["secretName"] == NATS_SECRET


def test_every_nats_client_in_prod_uses_tls_and_trusts_only_the_nats_ca() -> None:
    docs = rendered("overlays/prod")
    config = epm_config(docs)
    assert config["EPM_NATS_URL"].startswith("tls://")
    ca = config["EPM_NATS_TLS_CA"]
    owners = [d for d in docs if d["kind"] in ("Deployment", "Job")]
    assert len(owners) == 6
    for owner in owners:
        pod, c = first_container(owner)
        assert any(
            e.get("configMapRef", {}).get("name", "").startswith("epm-config") for e in c["envFrom"]
        )
        secret = secret_behind(pod, c, ca)
        assert secret["secretName"] == NATS_SECRET, owner["metadata"]["name"]
        # the CA only: the servers' private key stays with NATS
        assert secret["items"] == [{"key": "ca.crt", "path": PurePosixPath(ca).name}]


def test_the_prod_gateway_serves_https_to_the_ingress_and_prometheus() -> None:
    docs = rendered("overlays/prod")
    gateway = one(docs, "Deployment", "epm-gateway")
    pod, c = first_container(gateway)
    env = env_of(c)
    for setting, key in (("EPM_HTTP_TLS_CERT", "tls.crt"), ("EPM_HTTP_TLS_KEY", "tls.key")):
        assert PurePosixPath(env[setting]).name == key
        assert secret_behind(pod, c, env[setting])["secretName"] == GATEWAY_SECRET
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["scheme"] == "HTTPS", probe

    annotations = one(docs, "Ingress", "epm-gateway")["metadata"]["annotations"]
    assert annotations[INGRESS + "backend-protocol"] == "HTTPS"
    assert annotations[INGRESS + "proxy-ssl-verify"] == "on"
    namespace = gateway["metadata"]["namespace"]
    assert annotations[INGRESS + "proxy-ssl-secret"] == f"{namespace}/{GATEWAY_SECRET}"
    assert annotations[INGRESS + "proxy-ssl-name"] == "epm-gateway"

    (endpoint,) = [
        e for e in one(docs, "ServiceMonitor", "epm")["spec"]["endpoints"] if e["port"] == "http"
    ]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"]["ca"]["secret"] == {"name": GATEWAY_SECRET, "key": "ca.crt"}
    assert endpoint["tlsConfig"]["serverName"] == "epm-gateway"


def test_dev_needs_no_certificates() -> None:
    docs = rendered("overlays/dev")
    assert epm_config(docs)["EPM_NATS_URL"].startswith("nats://")
    _, gateway = first_container(one(docs, "Deployment", "epm-gateway"))
    assert "EPM_HTTP_TLS_CERT" not in env_of(gateway)


def referenced_secrets(docs: list[Doc]) -> set[str]:
    names: set[str] = set()
    for _, pod in pod_specs(docs):
        names |= {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
        for c in pod["containers"]:
            for e in c.get("env", []):
                if ref := e.get("valueFrom", {}).get("secretKeyRef"):
                    names.add(ref["name"])
    for ingress in of_kind(docs, "Ingress"):
        names |= {t["secretName"] for t in ingress["spec"].get("tls", [])}
        if proxy := ingress["metadata"].get("annotations", {}).get(INGRESS + "proxy-ssl-secret"):
            names.add(proxy.rpartition("/")[2])
    for monitor in of_kind(docs, "ServiceMonitor"):
        for e in monitor["spec"]["endpoints"]:
            if ca := e.get("tlsConfig", {}).get("ca", {}).get("secret"):
                names.add(ca["name"])
    return names


def documented_secrets() -> list[re.Pattern[str]]:
    """The first column of the table in deploy/README.md, "Secrets" (``<process>``: any)."""
    section = README.read_text().split("\n## Secrets\n", 1)[1].split("\n## ", 1)[0]
    cells = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    return [
        re.compile(re.sub(r"<[a-z]+>", "[a-z-]+", re.escape(name)))
        for cell in cells
        for name in re.findall(r"`([^`]+)`", cell)
    ]


def test_every_secret_prod_references_is_documented() -> None:
    documented = documented_secrets()
    referenced = referenced_secrets(rendered("overlays/prod"))
    assert {NATS_SECRET, GATEWAY_SECRET} <= referenced
    missing = {n for n in referenced if not any(p.fullmatch(n) for p in documented)}
    assert not missing, f"deploy/README.md, 'Secrets', does not list {sorted(missing)}"


def covers(names: list[str], host: str) -> bool:
    """A certificate's dnsNames cover ``host`` (a wildcard stands for one label)."""
    return host in names or f"*.{host.partition('.')[2]}" in names


def test_the_cert_manager_component_issues_every_tls_secret_prod_mounts(tmp_path: Path) -> None:
    """components/cert-manager is off by default; uncommented in overlays/prod, it builds and
    its Certificates produce the Secrets that prod mounts, for the names clients check."""
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    overlay = copy / "overlays" / "prod" / "kustomization.yaml"
    text = overlay.read_text()
    assert "# - ../../components/cert-manager\n" in text
    overlay.write_text(
        text.replace("# - ../../components/cert-manager\n", "- ../../components/cert-manager\n")
    )
    result = subprocess.run(
        [kubectl(), "kustomize", str(copy / "overlays" / "prod")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]

    certificates = {c["spec"]["secretName"]: c for c in of_kind(docs, "Certificate")}
    issuers = {i["metadata"]["name"]: i for i in of_kind(docs, "Issuer")}
    tls_secrets = {NATS_SECRET, GATEWAY_SECRET}  # what prod mounts (the tests above)
    assert tls_secrets <= set(certificates)
    namespace = one(docs, "Deployment", "epm-gateway")["metadata"]["namespace"]
    for doc in [*certificates.values(), *issuers.values()]:
        assert doc["metadata"]["namespace"] == namespace
    for name in tls_secrets:
        spec = certificates[name]["spec"]
        issuer = issuers[spec["issuerRef"]["name"]]["spec"]
        assert certificates[issuer["ca"]["secretName"]]["spec"]["isCA"] is True
        assert "server auth" in spec["usages"]
        for dns in spec["dnsNames"]:
            if ".svc" in dns:
                assert f".{namespace}.svc" in dns, dns

    nats = certificates[NATS_SECRET]["spec"]
    assert "client auth" in nats["usages"], "NATS routes verify each other's certificate"
    assert covers(nats["dnsNames"], urlsplit(epm_config(docs)["EPM_NATS_URL"]).hostname or "")
    routes = re.findall(r"nats://([^:]+):6222", CLUSTER_CONF.read_text())
    assert routes
    for host in routes:
        assert covers(nats["dnsNames"], host), host

    gateway = certificates[GATEWAY_SECRET]["spec"]
    annotations = one(docs, "Ingress", "epm-gateway")["metadata"]["annotations"]
    assert covers(gateway["dnsNames"], annotations[INGRESS + "proxy-ssl-name"])
