"""``epm nats-auth init``: the NATS operator, accounts and users of one deployment, as files.

The same files ``epm dev`` keeps in ``<data-dir>/nats-auth`` and an operator
loads into Kubernetes Secrets (deploy/README.md, "NATS authentication"):

    keys.json                   every seed (operator, accounts, signing keys): keep it
                                in your secret manager, never in the cluster
    resolver.conf               nats-server's auth block: operator JWT, system account,
                                full resolver, both accounts preloaded (not secret)
    <service>.creds             one NATS user per EPM process (EPM_NATS_CREDS)
    admin.creds                 ``epm streams apply`` (the whole JetStream API)
    issuer-request-svc.json     request-svc: signs device users, pushes revocations
    issuer-gateway.json         gateway: signs integrator users (EPM_NATS_ISSUER)

Keys are created once and kept; creds, issuers and resolver.conf are written
again on every run, so permissions follow the code after an upgrade.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from epm_service.natsauth import (
    SERVICE_GRANTS,
    AuthKeys,
    admin_permissions,
    service_permissions,
    write_private,
)

from epm_cli.output import JsonFlag, emit

KEYS = "keys.json"
RESOLVER_CONF = "resolver.conf"
ADMIN = "admin"
# Who hands out NATS users, and with what: request-svc also revokes (account JWT pushes).
ISSUERS = {"request-svc": "full", "gateway": "users"}


@dataclass(frozen=True)
class AuthFiles:
    root: Path

    @property
    def keys(self) -> Path:
        return self.root / KEYS

    @property
    def resolver_conf(self) -> Path:
        return self.root / RESOLVER_CONF

    def creds(self, user: str) -> Path:
        return self.root / f"{user}.creds"

    def issuer(self, service: str) -> Path | None:
        return self.root / f"issuer-{service}.json" if service in ISSUERS else None


def write_auth_files(root: Path, resolver_dir: str) -> AuthFiles:
    """Create the keys if missing; (re)write every creds file, issuer and resolver.conf."""
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)
    files = AuthFiles(root)
    keys = AuthKeys.load_or_create(files.keys)
    for service in SERVICE_GRANTS:
        write_private(
            files.creds(service), keys.user_creds(service, service_permissions(service)).encode()
        )
    write_private(files.creds(ADMIN), keys.user_creds(ADMIN, admin_permissions()).encode())
    issuer = keys.issuer()
    for service, scope in ISSUERS.items():
        path = files.issuer(service)
        assert path is not None
        write_private(path, (issuer if scope == "full" else issuer.without_revocation()).dump())
    write_private(files.resolver_conf, keys.server_config(resolver_dir).encode())
    return files


app = typer.Typer(help="NATS authentication (operator mode, JWTs).", no_args_is_help=True)


@app.command("init")
def init(
    out: Annotated[
        Path, typer.Option("--out", help="Directory for the keys, creds and resolver.conf.")
    ],
    resolver_dir: Annotated[
        str,
        typer.Option(
            help="Where nats-server keeps account JWTs (on its persistent volume).",
        ),
    ] = "/data/jwt",
    as_json: JsonFlag = False,
) -> None:
    """Create (once) the operator, the system and EPM accounts and their signing keys; write
    a creds file per EPM process, the issuers, and nats-server's resolver.conf.

    Examples:

    epm nats-auth init --out ./nats-auth

    epm nats-auth init --out ./nats-auth --resolver-dir /data/jwt
    """
    files = write_auth_files(out.resolve(), resolver_dir)
    written = sorted(p.name for p in files.root.iterdir() if not p.name.startswith("."))
    account = AuthKeys.load(files.keys).account.public
    emit(
        {"dir": str(files.root), "files": written, "account": account},
        as_json,
        f"wrote {', '.join(written)} in {files.root}\n"
        f"EPM account: {account} (KEDA's ScaledObject and the nats CLI name it; "
        "deploy/README.md, 'Scale')\n"
        "Load them into Secrets: see deploy/README.md, 'NATS authentication'. "
        f"Keep {KEYS} in your secret manager, not in the cluster.",
    )
