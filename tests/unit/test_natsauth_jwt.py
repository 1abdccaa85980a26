"""epm_service.natsauth without a server: keys, JWTs, creds files and each role's grants."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from epm_cli.nats_auth import write_auth_files
from epm_events.catalog import EVENT_CLASSES
from epm_service.natsauth import (
    REVOKED_FOREVER,
    SERVICE_GRANTS,
    AuthKeys,
    Issuer,
    NatsAuthError,
    decode_jwt,
    device_permissions,
    integrator_permissions,
    read_creds,
    service_permissions,
)


def test_a_jwt_is_signed_by_its_issuer_and_tampering_is_detected() -> None:
    keys = AuthKeys.create()
    jwt = keys.issuer().account_jwt()
    claims = decode_jwt(jwt)
    assert claims["iss"] == keys.operator_signing.public
    assert claims["sub"] == keys.account.public
    assert claims["nats"]["type"] == "account" and claims["nats"]["version"] == 2
    assert claims["nats"]["limits"]["disk_storage"] == -1  # JetStream on
    header, body, signature = jwt.split(".")
    forged = body[:-2] + ("AA" if body[-2:] != "AA" else "BB")
    with pytest.raises(NatsAuthError):
        decode_jwt(f"{header}.{forged}.{signature}")


def test_the_system_account_has_no_jetstream_and_the_operator_names_it() -> None:
    keys = AuthKeys.create()
    assert "disk_storage" not in decode_jwt(keys.system_account_jwt())["nats"]["limits"]
    operator = decode_jwt(keys.operator_jwt())["nats"]
    assert operator["system_account"] == keys.system_account.public
    assert operator["signing_keys"] == [keys.operator_signing.public]


def test_a_device_user_is_the_same_key_every_time_and_its_creds_parse() -> None:
    issuer = AuthKeys.create().issuer()
    creds = issuer.device_creds("acme", "d-1")
    jwt, key = read_creds(creds)
    assert key.public == issuer.device_user("acme", "d-1").public
    assert issuer.device_user("acme", "d-2").public != key.public
    claims = decode_jwt(jwt)
    assert claims["sub"] == key.public
    assert claims["iss"] == issuer.account_signing.public
    assert claims["nats"]["issuer_account"] == issuer.account


def test_a_revoked_device_user_is_in_the_account_jwt_forever() -> None:
    issuer = AuthKeys.create().issuer()
    user = issuer.device_user("acme", "d-1").public
    revocations = decode_jwt(issuer.account_jwt([user]))["nats"]["revocations"]
    assert revocations == {user: REVOKED_FOREVER}


def test_every_creds_of_an_integrator_token_are_one_user_the_gateway_can_issue() -> None:
    full = AuthKeys.create().issuer()
    gateway = full.without_revocation()  # what the gateway holds
    first, second = (gateway.integrator_creds("tok-1", "acme") for _ in range(2))
    user = full.integrator_user("tok-1").public  # request-svc finds it again to revoke it
    assert read_creds(first)[1].public == read_creds(second)[1].public == user
    assert full.integrator_user("tok-2").public != user
    assert user not in {full.device_user("acme", "tok-1").public}
    claims = decode_jwt(read_creds(first)[0])
    assert claims["sub"] == user and claims["exp"] - claims["iat"] == 24 * 3600


def test_a_device_may_use_only_its_own_subjects() -> None:
    p = device_permissions("acme", "d-1")
    assert set(p.subscribe) == {"_INBOX.acme.d-1.>"}
    assert "epm.agent.acme.d-1.>" in p.publish
    assert "epm.devrpc.acme.d-1.>" in p.publish
    assert "$JS.API.CONSUMER.CREATE.EPM_DEVICE.dev_acme_d-1.epm.device.acme.d-1.>" in p.publish
    for subject in p.publish:
        assert "acme" in subject and "d-1" in subject, subject
    assert not p.responses


def test_a_tenant_integrator_may_create_only_consumers_filtered_to_its_tenant() -> None:
    p = integrator_permissions("tok-1", "acme")
    creates = [s for s in p.publish if ".CONSUMER." in s]
    assert creates == ["$JS.API.CONSUMER.CREATE.EPM_EVENTS.*.epm.evt.acme.>"]
    assert not any("MSG.NEXT" in s or "$JS.ACK" in s or "DIRECT" in s for s in p.publish)
    assert p.subscribe == ("_INBOX_integrator.tok-1.>",)


def test_every_aggregate_of_the_catalog_has_a_service_that_may_append_it() -> None:
    """A new aggregate needs a line in SERVICE_GRANTS, or its writer is refused by NATS."""
    granted = {a for g in SERVICE_GRANTS.values() for a in g.aggregates}
    missing = {cls.AGGREGATE for cls in EVENT_CLASSES} - granted
    assert not missing, f"add {missing} to epm_service.natsauth.SERVICE_GRANTS"


def test_no_service_may_change_the_streams() -> None:
    for service in SERVICE_GRANTS:
        p = service_permissions(service)
        assert not any(
            s.startswith("$JS.API.STREAM.")
            and "INFO" not in s
            and "MSG.GET" not in s
            and "NAMES" not in s
            for s in p.publish
        ), service
        assert "$JS.API.>" not in p.publish and ">" not in p.publish
        assert p.responses  # it answers its commands


def test_seeds_never_show_in_a_repr() -> None:
    keys = AuthKeys.create()
    shown = repr(keys) + repr(keys.issuer()) + repr(keys.account)
    names = ("operator", "operator_signing", "system_account", "account", "account_signing")
    assert not any(getattr(keys, name).seed in shown for name in names)
    assert "NKEY SEED" not in shown  # the system creds stay out too


def test_the_auth_files_are_private_and_the_keys_are_kept(tmp_path: Path) -> None:
    root = tmp_path / "auth"
    files = write_auth_files(root, "/data/jwt")
    first = AuthKeys.load(files.keys)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    for path in root.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    write_auth_files(root, "/data/jwt")
    assert AuthKeys.load(files.keys).account.public == first.account.public
    issuer_file = files.issuer("gateway")
    assert issuer_file is not None
    gateway = Issuer.load(issuer_file)
    assert gateway.operator_signing is None and gateway.system_creds is None
    assert Issuer.load(files.issuer("request-svc") or "").operator_signing is not None


def test_a_broken_issuer_file_names_the_command_that_writes_it(tmp_path: Path) -> None:
    bad = tmp_path / "issuer.json"
    bad.write_text("{}")
    with pytest.raises(NatsAuthError, match="epm nats-auth init"):
        Issuer.load(bad)
