"""notify-svc: notification channels, who is told what, retries and delivery records.

Handler table (grows with the notifications issue):
- projections: tenants (TenantDirectory)
- commands: none yet
"""

from __future__ import annotations

from epm_service.runtime import ServiceDefinition, main
from epm_service.tenants import TenantDirectory

NAME = "notify-svc"

DEFINITION = ServiceDefinition(
    name=NAME,
    projections=[lambda ctx: TenantDirectory()],
)


def run() -> None:
    main(DEFINITION)
