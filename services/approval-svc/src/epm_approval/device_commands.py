"""Commands a device sends itself: ``epm.devrpc.<tenant>.<device>.<command>`` (request/reply).

Authentication: the device signs like on EPM_AGENT. Headers ``Nats-Msg-Id``
(a fresh random id) and ``Epm-Signature`` (base64 Ed25519 by the device's
enrolled key over ``epm_events.agent.signing_bytes(subject, msg_id, body)``);
the body carries ``issued_at`` (RFC 3339), accepted within ``FRESH_SECONDS`` of
the server's clock. The public key is the one in DeviceEnrolled, as this
service's offline projection has it; revoked and unknown devices are refused.

Secrets in the reply are sealed to the device's X25519 key with
``epm_domain.sealed.reply_context(tenant, device, msg_id)``, so a captured or
replayed request never shows anyone a code.

Reply: ``{"ok": true, "result": {...}}`` or ``{"ok": false, "error": {status, title,
detail}}`` as on ``epm.rpc``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from epm_domain.sealed import parse_public_key, reply_context, seal
from epm_events.agent import SIGNATURE_HEADER, signing_bytes
from epm_events.ids import InvalidId, validate_token
from epm_events.subjects import device_inbox_prefix, device_rpc_filter, parse_device_rpc_subject
from epm_service.errors import CommandError, Forbidden, Invalid, NotFound
from nats.aio.client import Client
from nats.aio.msg import Msg

from epm_approval.offline_commands import OfflineCommands
from epm_approval.offline_view import OfflineDevice

log = logging.getLogger(__name__)

FRESH_SECONDS = 300
SELF_GENERATE = "self_generate_code"

DeviceHandler = Callable[[str, OfflineDevice, str, dict[str, Any]], Awaitable[dict[str, Any]]]


class DeviceCommandServer:
    """Serves ``epm.devrpc.*.*.<command>`` for approval-svc's device commands (queue group)."""

    def __init__(self, nc: Client, commands: OfflineCommands, queue: str) -> None:
        self.nc = nc
        self.commands = commands
        self.queue = queue
        self.handlers: Mapping[str, DeviceHandler] = {SELF_GENERATE: self.self_generate_code}
        self._subs: list[Any] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        for name in self.handlers:
            self._subs.append(
                await self.nc.subscribe(device_rpc_filter(name), queue=self.queue, cb=self._on_msg)
            )

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    async def _on_msg(self, msg: Msg) -> None:
        task = asyncio.create_task(self._handle(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, msg: Msg) -> None:
        try:
            where = parse_device_rpc_subject(msg.subject)
        except InvalidId:
            return  # not a device's subject: no one to answer
        if not msg.reply.startswith(device_inbox_prefix(where.tenant, where.device) + "."):
            # Answered only under the device's own inbox: approval-svc may publish where a
            # device may not (epm.evt.*), so a reply subject the device chose elsewhere
            # would have it write there for the device.
            log.warning(
                "device command with a reply subject outside the device's inbox ignored",
                extra={"tenant": where.tenant, "device_id": where.device, "reply": msg.reply},
            )
            return
        try:
            handler = self.handlers[where.command]
            device, msg_id, body = await self._authenticate(msg, where.tenant, where.device)
            reply: dict[str, Any] = {
                "ok": True,
                "result": await handler(where.tenant, device, msg_id, body),
            }
        except CommandError as exc:
            reply = {"ok": False, "error": exc.to_dict()}
        except InvalidId as exc:
            reply = {"ok": False, "error": Invalid(str(exc)).to_dict()}
        except Exception as exc:
            log.exception("device command failed", extra={"subject": msg.subject})
            reply = {
                "ok": False,
                "error": {"status": 500, "title": "Internal error", "detail": type(exc).__name__},
            }
        if msg.reply:
            await self.nc.publish(msg.reply, orjson.dumps(reply))

    async def _authenticate(
        self, msg: Msg, tenant: str, device_id: str
    ) -> tuple[OfflineDevice, str, dict[str, Any]]:
        headers = msg.headers or {}
        msg_id = validate_token(headers.get("Nats-Msg-Id", ""), "Nats-Msg-Id")
        device = await self.commands.known_device(tenant, device_id)
        if device is None or device.revoked:
            raise NotFound(f"device {device_id!r} is not enrolled in tenant {tenant!r}: enroll it")
        try:
            signature = base64.b64decode(headers.get(SIGNATURE_HEADER, ""), validate=True)
            key = Ed25519PublicKey.from_public_bytes(base64.b64decode(device.public_key))
            key.verify(signature, signing_bytes(msg.subject, msg_id, msg.data))
        except (InvalidSignature, binascii.Error, ValueError):
            log.warning(
                "device command with a bad signature refused",
                extra={"tenant": tenant, "device_id": device_id, "msg_id": msg_id},
            )
            raise Forbidden(
                "the signature does not match this device's enrolled key: sign "
                "signing_bytes(subject, Nats-Msg-Id, body) with the device key",
                status=401,
                title="Not authenticated",
            ) from None
        try:
            body = orjson.loads(msg.data)
            issued_at = datetime.fromisoformat(str(body["issued_at"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise Invalid("the body must be a JSON object with issued_at (RFC 3339)") from None
        if issued_at.tzinfo is None:
            raise Invalid("issued_at needs a time zone, e.g. 2030-01-01T12:00:00+00:00")
        if abs((datetime.now(UTC) - issued_at).total_seconds()) > FRESH_SECONDS:
            raise Forbidden(
                f"this request is older than {FRESH_SECONDS} s (or the device clock is off): "
                "send a fresh one",
                status=401,
                title="Not authenticated",
            )
        return device, msg_id, body

    async def self_generate_code(
        self, tenant: str, device: OfflineDevice, msg_id: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        issued = await self.commands.self_generated_code(tenant, device, body)
        assert device.encryption_key is not None  # usable() checked it
        sealed = seal(
            parse_public_key(device.encryption_key),
            issued.code.encode(),
            reply_context(tenant, device.id, msg_id),
        )
        out = issued.to_api()
        del out["code"]
        return {**out, "sealed_code": sealed}
