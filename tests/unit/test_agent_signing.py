"""The signed ElevationRequested message: what request-svc verifies."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import orjson
import pytest
from cryptography.exceptions import InvalidSignature
from epm_agent.device_key import DeviceKey
from epm_agent.elevation import MSG_ID_HEADER, elevation_message
from epm_events.agent import REPLY_HEADER, SIGNATURE_HEADER, signing_bytes
from epm_events.catalog import AppInfo
from epm_events.ids import request_id_for

APP = AppInfo(file_name="tool.exe", sha256="cd" * 32, publisher="Acme", path="C:/tool.exe")


def signed(
    key: DeviceKey, reply_to: str | None = "_INBOX.acme.d-1.x"
) -> tuple[str, str, bytes, dict[str, str]]:
    m = elevation_message(
        key, tenant="acme", device_id="d-1", user="alice", app=APP, reason="why", reply_to=reply_to
    )
    return m.subject, m.msg_id, m.body, m.headers


def verify(key: DeviceKey, subject: str, msg_id: str, body: bytes, headers: dict[str, str]) -> None:
    signature = base64.b64decode(headers[SIGNATURE_HEADER])
    key.public_key.verify(signature, signing_bytes(subject, msg_id, body))


def test_signature_verifies_with_the_device_public_key() -> None:
    key = DeviceKey.generate()
    subject, msg_id, body, headers = signed(key)

    verify(key, subject, msg_id, body, headers)
    assert headers[MSG_ID_HEADER] == msg_id
    assert subject == "epm.agent.acme.d-1.ElevationRequested"


@pytest.mark.parametrize("part", ["subject", "msg_id", "body"])
def test_changing_any_signed_part_breaks_the_signature(part: str) -> None:
    key = DeviceKey.generate()
    subject, msg_id, body, headers = signed(key)
    if part == "subject":
        subject = "epm.agent.other.d-1.ElevationRequested"
    elif part == "msg_id":
        msg_id = msg_id[:-1] + ("0" if msg_id[-1] != "0" else "1")
    else:
        body = body.replace(b"alice", b"admin")

    with pytest.raises(InvalidSignature):
        verify(key, subject, msg_id, body, headers)


def test_another_devices_key_does_not_verify() -> None:
    subject, msg_id, body, headers = signed(DeviceKey.generate())
    with pytest.raises(InvalidSignature):
        verify(DeviceKey.generate(), subject, msg_id, body, headers)


def test_message_is_a_cloudevent_whose_id_names_the_request() -> None:
    key = DeviceKey.generate()
    at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    m = elevation_message(
        key,
        tenant="acme",
        device_id="d-1",
        user="alice",
        app=APP,
        reason="why",
        msg_id="m-1",
        time=at,
    )
    envelope = orjson.loads(m.body)

    assert envelope["id"] == "m-1" and m.request_id == request_id_for("m-1")
    assert envelope["type"] == "epm.ElevationRequested.v1"
    assert envelope["source"] == "/agents/acme/d-1"
    assert (envelope["subject"], envelope["tenant"]) == ("d-1", "acme")
    assert envelope["data"] == {
        "user": "alice",
        "app": APP.model_dump(mode="json"),
        "reason": "why",
    }


def test_reply_header_only_when_an_answer_is_wanted() -> None:
    key = DeviceKey.generate()
    assert signed(key)[3][REPLY_HEADER] == "_INBOX.acme.d-1.x"
    assert REPLY_HEADER not in signed(key, reply_to=None)[3]


def test_device_key_never_shows_its_private_half(tmp_path: object) -> None:
    key = DeviceKey.generate()
    assert repr(key) == f"DeviceKey(public={key.public_key_b64()})"
    assert len(base64.b64decode(key.public_key_b64())) == 32
