"""audit-svc: the hash-chained audit projection, its queries and its signed checkpoints.

Handler table:
- projections:
  - tenants (TenantDirectory): TenantCreated
  - audit (AuditTrail, epm_audit.trail): every domain event in EPM_EVENTS, whatever
    its type, appended to its tenant's hash chain (``_global``: the MSP chain)
- commands (``epm.rpc.audit-svc.<command>``, epm_audit.commands; docs/internal-contracts.md):
  - list          records, filtered and paged (GET /v1/audit)
  - export_page   one page of an NDJSON export (GET /v1/audit/export)
  - verify        chains and checkpoint signatures recomputed (GET /v1/audit/verify)
  - keys          public halves of the checkpoint keys (GET /v1/audit/keys)
- worker (epm_audit.signing.Checkpointer), once the trail has caught up: appends
  AuditCheckpointSigned to each chain's tenant every EPM_AUDIT_CHECKPOINT_RECORDS
  records or EPM_AUDIT_CHECKPOINT_INTERVAL; the key is AuditKeyCreated (``_global``),
  sealed under EPM_MASTER_KEY. Without that key the trail runs unsigned (logged).

Events appended: AuditKeyCreated (``_global.auditkey``, once), AuditCheckpointSigned
(``<tenant>.audit.<checkpoint id>``), each with expected sequence 0.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from epm_service.errors import Unavailable
from epm_service.rpc import CommandHandler
from epm_service.runtime import ServiceContext, ServiceDefinition, main
from epm_service.tenants import TenantDirectory

from epm_audit.commands import AuditCommands
from epm_audit.config import AuditSettings
from epm_audit.signing import Checkpointer, SigningKey
from epm_audit.trail import AuditTrail

NAME = "audit-svc"

log = logging.getLogger(__name__)


def commands(ctx: ServiceContext) -> Mapping[str, CommandHandler]:
    audit = AuditCommands(ctx.projector(AuditTrail.name), ctx.projector(TenantDirectory.name))
    return {
        "list": audit.list,
        "export_page": audit.export_page,
        "verify": audit.verify,
        "keys": audit.keys,
    }


async def on_start(ctx: ServiceContext) -> None:
    trail = ctx.projector(AuditTrail.name)
    await trail.wait_caught_up()
    key = SigningKey(
        trail, ctx.publisher, ctx.settings.master_key, ctx.settings.previous_master_keys
    )
    try:
        await key.current()
    except Unavailable as exc:
        log.warning("audit checkpoints are not signed: %s", exc.detail)
        return
    await ctx.start_worker(Checkpointer(trail, ctx.publisher, key, AuditSettings().policy))


DEFINITION = ServiceDefinition(
    name=NAME,
    projections=[lambda ctx: TenantDirectory(), lambda ctx: AuditTrail()],
    commands=commands,
    on_start=on_start,
)


def run() -> None:
    main(DEFINITION)
