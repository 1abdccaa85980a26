"""The processes of EPM, by the name operators use (``epm serve NAME``, Kubernetes, epm dev)."""

from __future__ import annotations

import importlib
from collections.abc import Callable

SERVICES: dict[str, str] = {
    "gateway": "epm_gateway.app",
    "request-svc": "epm_request.app",
    "approval-svc": "epm_approval.app",
    "audit-svc": "epm_audit.app",
    "notify-svc": "epm_notify.app",
}


def runner(name: str) -> Callable[[], None]:
    module = importlib.import_module(SERVICES[name])
    run: Callable[[], None] = module.run
    return run
