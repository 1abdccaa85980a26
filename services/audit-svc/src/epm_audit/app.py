"""audit-svc: the hash-chained audit projection.

Handler table:
- projections:
  - tenants (TenantDirectory): TenantCreated
  - audit (AuditTrail, epm_audit.trail): every domain event in EPM_EVENTS, whatever
    its type, appended to its tenant's hash chain (``_global``: the MSP chain)
- commands: none yet (queries, export, verify and signed checkpoints come next)
"""

from __future__ import annotations

from epm_service.runtime import ServiceDefinition, main
from epm_service.tenants import TenantDirectory

from epm_audit.trail import AuditTrail

NAME = "audit-svc"

DEFINITION = ServiceDefinition(
    name=NAME,
    projections=[lambda ctx: TenantDirectory(), lambda ctx: AuditTrail()],
)


def run() -> None:
    main(DEFINITION)
