"""request-svc: enrollment tokens, devices, agent intake, request lifecycle.

Handler table (grows with the requests issue):
- projections: tenants (TenantDirectory)
- commands: none yet
"""

from __future__ import annotations

from epm_service.runtime import ServiceDefinition, main
from epm_service.tenants import TenantDirectory

NAME = "request-svc"

DEFINITION = ServiceDefinition(
    name=NAME,
    projections=[lambda ctx: TenantDirectory()],
)


def run() -> None:
    main(DEFINITION)
