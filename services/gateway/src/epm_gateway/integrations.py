"""``GET /v1/integrations/nats``: NATS credentials for an integrator, to read its scope.

The gateway signs a user JWT with the EPM account's signing key
(``EPM_NATS_ISSUER``): push consumers on EPM_EVENTS filtered to the token's
tenant (every tenant for an MSP-wide integrator), deliveries under the
returned inbox prefix, nothing else (epm_service.natsauth.integrator_permissions).
The creds expire after a day. They are one NATS user per token (its key is derived
from the token id), so revoking the token revokes every creds issued for it at once:
the revocation asks request-svc to push the user into the account JWT's revocations
(epm_gateway.commands.revoke_nats_user); a revoked token gets no new ones.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from epm_events.streams import EVENTS
from epm_events.subjects import ALL_EVENTS, tenant_events_filter
from epm_service.errors import Forbidden, Unavailable
from epm_service.natsauth import (
    INTEGRATOR_CREDS_SECONDS,
    Issuer,
    NatsAuthError,
    integrator_inbox_prefix,
)
from epm_service.tls import public_nats_ca
from fastapi import APIRouter

from epm_gateway.api import Caller, Service

router = APIRouter(tags=["integrations"])


@cache
def _issuer(path: str) -> Issuer:
    return Issuer.load(path)


@router.get("/v1/integrations/nats")
async def nats_credentials(who: Caller, svc: Service) -> dict[str, Any]:
    """For an integrator token: a NATS URL and creds that may read its scope and nothing else.

    Read with an ordered (AckNone) push consumer on ``stream``, filtered to one of
    ``subjects``, named (any name: the filter then travels in the create subject the creds
    allow), delivering under ``inbox_prefix`` (nats-py: ``connect(inbox_prefix=...)``).
    The creds expire after ``expires_in`` seconds; revoking the token
    (``DELETE /v1/tokens/{id}``) revokes them at once: NATS drops their connections and
    refuses them from then on. ``ca``: the PEM of the CA to trust for NATS over TLS
    (``EPM_PUBLIC_NATS_CA``, as agents get it at enrollment), or null: the system's."""
    if who.role != "integrator":
        raise Forbidden(
            "NATS credentials are for integrator tokens; issue one with "
            "'epm token issue --role integrator'"
        )
    settings = svc.ctx.settings
    if not settings.nats_issuer:
        raise Unavailable(
            "this gateway issues no NATS credentials: set EPM_NATS_ISSUER "
            "(epm nats-auth init writes issuer-gateway.json)"
        )
    try:
        issuer = _issuer(settings.nats_issuer)
    except NatsAuthError as exc:
        raise Unavailable(str(exc)) from None
    subject = ALL_EVENTS if who.tenant is None else tenant_events_filter(who.tenant)
    return {
        "url": settings.public_nats_url or settings.nats_url,
        "stream": EVENTS.name,
        "subjects": [subject],
        "inbox_prefix": integrator_inbox_prefix(who.token_id),
        "creds": issuer.integrator_creds(who.token_id, who.tenant),
        "expires_in": INTEGRATOR_CREDS_SECONDS,
        "ca": public_nats_ca(settings),
        "user": None,
        "password": None,
    }
