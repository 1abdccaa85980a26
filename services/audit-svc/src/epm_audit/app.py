"""audit-svc: the hash-chained audit projection (filled in by the audit issue).

Handler table:
- projections: tenants (TenantDirectory)
- commands: none yet
"""

from __future__ import annotations

from epm_service.runtime import ServiceDefinition, main
from epm_service.tenants import TenantDirectory

NAME = "audit-svc"

DEFINITION = ServiceDefinition(
    name=NAME,
    projections=[lambda ctx: TenantDirectory()],
)


def run() -> None:
    main(DEFINITION)
