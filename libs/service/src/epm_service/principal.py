"""Who is asking: the authenticated principal, and what each role may do (API.md)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Role = Literal["msp_admin", "msp_technician", "tenant_admin", "tenant_technician", "integrator"]
ROLES: tuple[Role, ...] = (
    "msp_admin",
    "msp_technician",
    "tenant_admin",
    "tenant_technician",
    "integrator",
)
MSP_ROLES = frozenset({"msp_admin", "msp_technician"})


@dataclass(frozen=True, slots=True)
class Principal:
    token_id: str
    name: str
    role: Role
    tenant: str | None  # None: MSP-wide (msp_* roles, or an integrator of all tenants)

    @property
    def is_msp(self) -> bool:
        return self.role in MSP_ROLES

    def sees_tenant(self, tenant: str) -> bool:
        """Tenants are walls: only MSP principals (and all-tenant integrators) cross them."""
        return self.tenant is None or self.tenant == tenant

    @property
    def actor(self) -> str:
        return f"{self.role}:{self.name}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Principal:
        return cls(token_id=d["token_id"], name=d["name"], role=d["role"], tenant=d.get("tenant"))


def a_role(role: str) -> str:
    """The role with its article, for messages: "a tenant_admin", "an integrator", "an msp_admin"."""
    return f"{'an' if role[:1] in 'aeiou' or role.startswith('msp') else 'a'} {role}"


SYSTEM = Principal(token_id="system", name="system", role="msp_admin", tenant=None)
