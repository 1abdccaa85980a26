"""approval-svc: rules, decisions, one-time grants, offline policy, keys and codes.

Handler table (grows with the requests and offline issues):
- projections: tenants (TenantDirectory)
- commands: none yet
"""

from __future__ import annotations

from epm_service.runtime import ServiceDefinition, main
from epm_service.tenants import TenantDirectory

NAME = "approval-svc"

DEFINITION = ServiceDefinition(
    name=NAME,
    projections=[lambda ctx: TenantDirectory()],
)


def run() -> None:
    main(DEFINITION)
