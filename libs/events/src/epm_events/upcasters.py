"""Upcasters: lift an older schema version of an event to the current one.

One function per (event name, from-version), registered explicitly; the codec
applies them in a chain (v1 -> v2 -> ...) before validating against the
current model, so no handler ever sees an old shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Data = dict[str, Any]
Upcaster = Callable[[Data], Data]

UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def upcaster(name: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    def register(fn: Upcaster) -> Upcaster:
        key = (name, from_version)
        if key in UPCASTERS:
            raise RuntimeError(f"two upcasters for {name} v{from_version}")
        UPCASTERS[key] = fn
        return fn

    return register


def upcast(name: str, version: int, target: int, data: Data) -> Data:
    """Apply the chain from ``version`` to ``target``; KeyError if a link is missing."""
    while version < target:
        data = UPCASTERS[(name, version)](data)
        version += 1
    return data


@upcaster("TenantCreated", 1)
def tenant_created_v1_to_v2(data: Data) -> Data:
    """v1 called the display name ``display_name`` and did not record who created the tenant.

    v2 renamed it to ``name`` (the word API.md uses) and added ``created_by``;
    for v1 events the creator is unknown, recorded as ``"unknown"``.
    """
    out = {k: v for k, v in data.items() if k != "display_name"}
    out["name"] = data["display_name"]
    out.setdefault("created_by", "unknown")
    return out
