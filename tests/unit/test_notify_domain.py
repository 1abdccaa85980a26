"""notify-svc's pure parts: channel input, who may manage what, signing, retries, notices."""

from __future__ import annotations

import base64
import secrets
import time
from datetime import UTC, datetime

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from epm_events.catalog import Actor, AppInfo, Approved, RequestCreated
from epm_events.envelope import new_envelope
from epm_notify.channels import authorize, new_channel, webhook_key
from epm_notify.mail import SmtpServer, SmtpUrlError
from epm_notify.notices import (
    CreationNotice,
    RequestSummary,
    console_link,
    notice_of,
    notification_id,
    plan_follow_up,
    render,
)
from epm_notify.retry import Delivered, NotDelivered, RetryPolicy, outcome_of_status
from epm_notify.signing import signed_headers
from epm_notify.vapid import application_server_key, vapid_key
from epm_service.errors import CommandError, Forbidden, Invalid, NotFound
from epm_service.principal import Principal
from epm_service.secretbox import SecretBox
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

MSP_ADMIN = Principal("t1", "root", "msp_admin", None)
MSP_TECH = Principal("t2", "mo", "msp_technician", None)
ACME_ADMIN = Principal("t3", "ann", "tenant_admin", "acme")
ACME_TECH = Principal("t4", "tom", "tenant_technician", "acme")


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def subscription() -> dict[str, object]:
    key = ec.generate_private_key(ec.SECP256R1())
    point = key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    return {
        "endpoint": "https://push.example.com/s/1",
        "keys": {"p256dh": b64url(point), "auth": b64url(secrets.token_bytes(16))},
    }


# --- channels -------------------------------------------------------------------------


def test_a_webhook_without_a_secret_gets_a_generated_one_shown_once() -> None:
    ch = new_channel({"kind": "webhook", "url": "https://hooks.example.com/epm"})
    assert ch.shown_secret is not None and ch.shown_secret.startswith("whsec_")
    assert len(webhook_key(ch.shown_secret)) >= 24
    assert ch.secret == ch.shown_secret
    assert "secret" not in ch.target


def test_a_given_webhook_secret_is_kept_and_a_bad_one_refused() -> None:
    good = "whsec_" + base64.b64encode(b"k" * 32).decode()
    assert new_channel({"kind": "webhook", "url": "http://h/x", "secret": good}).secret == good
    for bad in ("plain", "whsec_!!!", "whsec_" + base64.b64encode(b"short").decode()):
        with pytest.raises(Invalid):
            new_channel({"kind": "webhook", "url": "http://h/x", "secret": bad})


@pytest.mark.parametrize(
    "args",
    [
        {"kind": "sms", "to": "x"},
        {"kind": "webhook", "url": "ftp://h/x"},
        {"kind": "webhook", "url": "https://"},
        {"kind": "webhook", "url": "https://user:pw@h/x"},
        {"kind": "email", "to": "not-an-address"},
        {"kind": "email", "to": "a@b c"},
        {"kind": "push", "subscription": {"endpoint": "https://p/x"}},
        {
            "kind": "push",
            "subscription": {"endpoint": "https://p/x", "keys": {"p256dh": "AAAA", "auth": "AAAA"}},
        },
    ],
)
def test_invalid_channel_input_is_refused_with_a_reason(args: dict[str, object]) -> None:
    with pytest.raises(Invalid) as err:
        new_channel(args)
    assert err.value.detail


def test_a_push_subscription_keeps_only_its_endpoint_in_clear() -> None:
    sub = subscription()
    ch = new_channel({"kind": "push", "subscription": sub})
    assert ch.target == {"endpoint": sub["endpoint"]}
    assert ch.secret is not None and "p256dh" in ch.secret and ch.shown_secret is None


def test_tenant_admin_manages_its_own_tenant_only() -> None:
    authorize(ACME_ADMIN, "acme")
    with pytest.raises(NotFound):
        authorize(ACME_ADMIN, "globex")
    with pytest.raises(Forbidden):
        authorize(ACME_TECH, "acme")


def test_msp_wide_channels_are_for_msp_admins_and_invisible_to_tenants() -> None:
    authorize(MSP_ADMIN, "_global")
    authorize(MSP_ADMIN, "acme")
    for p in (MSP_TECH, ACME_ADMIN):
        with pytest.raises(Forbidden):
            authorize(p, "_global")
    with pytest.raises(NotFound):
        authorize(ACME_ADMIN, "_global", existing=True)
    with pytest.raises(CommandError) as err:
        authorize(MSP_TECH, "acme")
    assert err.value.status == 403


# --- signing ----------------------------------------------------------------------------


def test_webhook_signature_verifies_with_the_standard_webhooks_library() -> None:
    secret = new_channel({"kind": "webhook", "url": "http://h/x"}).secret
    assert secret is not None
    body = b'{"id":"e1","type":"epm.RequestCreated.v1"}'
    headers = signed_headers(secret, "n-1", int(time.time()), body)
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(body, headers)["id"] == "e1"
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body + b" ", headers)


# --- retries ------------------------------------------------------------------------------


def test_backoff_grows_exponentially_with_jitter_and_stops_after_the_last_try() -> None:
    policy = RetryPolicy(max_attempts=5, base=1.0, cap=5.0)
    assert [policy.delay(n, lambda: 0.0) for n in range(1, 6)] == [0.5, 1.0, 2.0, 2.5, None]
    assert [policy.delay(n, lambda: 1.0) for n in range(1, 5)] == [1.0, 2.0, 4.0, 5.0]


def test_http_answers_are_classified_retry_or_permanent() -> None:
    assert isinstance(outcome_of_status(204, "webhook"), Delivered)
    for status, permanent in (
        (503, False),
        (500, False),
        (429, False),
        (408, False),
        (400, True),
        (401, True),
    ):
        out = outcome_of_status(status, "webhook")
        assert isinstance(out, NotDelivered) and out.permanent is permanent


# --- who is told what ---------------------------------------------------------------------

APP = AppInfo(file_name="setup.exe", sha256="a" * 64, publisher="Contoso", app_name="Setup")
CREATED = RequestCreated(
    request_id="req-1",
    device_id="pc-1",
    user="bob",
    app=APP,
    reason="install printer",
    created_at=datetime(2026, 1, 1, tzinfo=UTC),
    expires_at=datetime(2026, 1, 5, tzinfo=UTC),
)


def test_a_rule_decision_withdraws_notices_nobody_has_seen_yet() -> None:
    created = [
        CreationNotice("ch-untried", "pending", 0),
        CreationNotice("ch-retrying", "pending", 2),
        CreationNotice("ch-sent", "sent", 1),
        CreationNotice("ch-removed", "cancelled", 0),
    ]
    by_rule = plan_follow_up(True, created)
    assert by_rule.withdraw == ("ch-untried",)
    assert by_rule.notify == ("ch-retrying", "ch-sent")
    by_human = plan_follow_up(False, created)
    assert by_human.withdraw == () and by_human.notify == ("ch-untried", "ch-retrying", "ch-sent")


def test_notices_say_what_and_who_and_link_to_the_request() -> None:
    summary = RequestSummary.of(CREATED, "acme")
    notice = notice_of(CREATED, summary, "https://epm.example.com/")
    assert notice.link == console_link("https://epm.example.com", "req-1")
    assert notice.link == "https://epm.example.com/#/requests/req-1"
    assert "Setup by Contoso" in notice.title and "bob on pc-1 (acme)" in notice.title
    assert "install printer" in notice.text and notice.link in notice.text
    approved = Approved(request_id="req-1", scope="once", by=Actor(kind="technician", id="tom"))
    follow = notice_of(approved, summary, "https://epm.example.com")
    assert follow.title.startswith("Approved:") and "tom" in follow.text


def test_the_webhook_body_is_the_cloudevent_with_link_and_summary() -> None:
    env = new_envelope(CREATED, tenant="acme", source="/epm/request-svc")
    notice = notice_of(CREATED, RequestSummary.of(CREATED, "acme"), "http://c")
    body = orjson.loads(render("webhook", env, notice))
    assert body["id"] == env.id and body["type"] == "epm.RequestCreated.v1"
    assert body["data"]["user"] == "bob" and body["link"] == "http://c/#/requests/req-1"


def test_each_event_and_channel_pair_has_its_own_stable_notification_id() -> None:
    assert notification_id("e1", "ch-a") == notification_id("e1", "ch-a")
    assert (
        len(
            {
                notification_id("e1", "ch-a"),
                notification_id("e1", "ch-b"),
                notification_id("e2", "ch-a"),
            }
        )
        == 3
    )


# --- adapters' pure parts -------------------------------------------------------------------


def test_smtp_url_forms() -> None:
    plain = SmtpServer.parse("smtp://127.0.0.1:2525")
    assert (plain.host, plain.port, plain.use_tls, plain.start_tls) == (
        "127.0.0.1",
        2525,
        False,
        False,
    )
    tls = SmtpServer.parse("smtps://mail.example.com")
    assert (tls.port, tls.use_tls) == (465, True)
    st = SmtpServer.parse("smtp://u%40x:p%3Aw@mail.example.com?starttls=true&from=epm@example.com")
    assert (st.port, st.start_tls, st.username, st.password) == (587, True, "u@x", "p:w")
    assert st.mail_from == "epm@example.com" and "p:w" not in repr(st)
    with pytest.raises(SmtpUrlError):
        SmtpServer.parse("http://mail.example.com")


def test_the_vapid_key_is_derived_from_the_master_key_and_stable() -> None:
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    a = application_server_key(vapid_key(SecretBox.from_master_key(key)))
    b = application_server_key(vapid_key(SecretBox.from_master_key(key)))
    other = base64.b64encode(secrets.token_bytes(32)).decode()
    assert a == b and len(base64.urlsafe_b64decode(a + "=")) == 65
    assert a != application_server_key(vapid_key(SecretBox.from_master_key(other)))
