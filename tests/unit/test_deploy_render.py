"""Render deploy/k8s with the machine's real ``kubectl kustomize``.

The helpers here are shared by the other test_deploy_* modules.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
TARGETS = ("base", "overlays/dev", "overlays/prod")
VENV_BIN = Path(sys.executable).parent

Doc = dict[str, Any]


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail(
            "kubectl not found on PATH: the deploy tests render deploy/k8s with "
            "`kubectl kustomize` (kubectl >= 1.30). Install kubectl and run again.",
            pytrace=False,
        )
    return found


@functools.cache
def rendered_text(target: str) -> str:
    result = subprocess.run(
        [kubectl(), "kustomize", str(K8S / target)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize {target} failed:\n{result.stderr}"
    return result.stdout


def rendered(target: str) -> list[Doc]:
    return [d for d in yaml.safe_load_all(rendered_text(target)) if d]


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def epm_config(docs: list[Doc]) -> dict[str, str]:
    """The EPM_* settings every process gets (the generated epm-config ConfigMap)."""
    (config,) = [
        d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].startswith("epm-config-")
    ]
    data: dict[str, str] = config["data"]
    return data


POD_OWNERS = ("Deployment", "StatefulSet", "Job", "DaemonSet", "CronJob")


def pod_specs(docs: list[Doc]) -> Iterator[tuple[str, Doc]]:
    """(``Kind/name``, pod spec) for everything that runs pods."""
    for d in docs:
        if d["kind"] in POD_OWNERS:
            template = d["spec"]["template"]
            if d["kind"] == "CronJob":
                template = d["spec"]["jobTemplate"]["spec"]["template"]
            yield f"{d['kind']}/{d['metadata']['name']}", template["spec"]


def tool(name: str) -> str:
    """A tool the dev dependency group installs into the virtualenv (hadolint, nats-server, ...)."""
    path = VENV_BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    assert found, f"{name} not found: it comes with the dev dependency group; run 'uv sync'"
    return found


@pytest.mark.parametrize("target", TARGETS)
def test_every_target_renders(target: str) -> None:
    kinds = {d["kind"] for d in rendered(target)}
    assert {"Deployment", "StatefulSet", "Job", "NetworkPolicy", "ConfigMap"} <= kinds


def test_a_missing_kubectl_fails_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(pytest.fail.Exception, match="kubectl not found on PATH"):
        kubectl()
