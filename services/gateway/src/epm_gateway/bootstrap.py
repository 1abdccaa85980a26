"""The first msp_admin: a token from ``EPM_BOOTSTRAP_TOKEN_FILE`` (``epm dev`` writes it).

Its id is derived from its hash and it is appended with expected sequence 0,
so restarts and replicas record it once: a conflict means it exists already.
"""

from __future__ import annotations

import logging

from epm_events.catalog import TokenIssued
from epm_events.ids import GLOBAL_TENANT, derived_event_id
from epm_service.publisher import ConcurrencyConflict
from epm_service.runtime import ServiceContext

from epm_gateway.directory import Directory
from epm_gateway.domain import bootstrap_token_id, hash_token, looks_like_token

log = logging.getLogger(__name__)

BOOTSTRAP_NAME = "bootstrap admin"


async def ensure_bootstrap_admin(ctx: ServiceContext) -> None:
    path = ctx.settings.bootstrap_token_file
    if path is None:
        return
    if not path.exists():
        log.warning(
            "bootstrap token file does not exist; no bootstrap admin token",
            extra={"path": str(path)},
        )
        return
    token = path.read_text().strip()
    if not looks_like_token(token):
        raise RuntimeError(
            f"{path} does not hold a usable token (one line, 16-512 printable characters,"
            " no spaces); delete it and let 'epm dev' create a new one"
        )
    token_hash = hash_token(token)
    token_id = bootstrap_token_id(token_hash)
    event = TokenIssued(
        token_id=token_id,
        name=BOOTSTRAP_NAME,
        role="msp_admin",
        tenant_id=None,
        token_hash=token_hash,
        issued_by="system",
    )
    try:
        [appended] = await ctx.publisher.append(
            GLOBAL_TENANT, [event], 0, ids=[derived_event_id(token_id, TokenIssued.NAME)]
        )
    except ConcurrencyConflict:
        log.info("bootstrap admin token already recorded", extra={"token_id": token_id})
        return
    await ctx.projector(Directory.name).wait_for(appended.seq)
    log.info("bootstrap admin token recorded", extra={"token_id": token_id})
