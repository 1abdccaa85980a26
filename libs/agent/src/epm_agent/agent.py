"""The agent SDK: enroll, ask for elevation, learn the outcome. Used by the CLI and the
fleet simulator alike; every method is async and the state lives in the state dir.

    async with Agent(Path("/var/lib/epm-agent")) as agent:
        await agent.enroll("https://epm.example", token)
        outcome = await agent.request("/usr/bin/tool", user="alice", reason="update")
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors
from epm_events.agent import RequestAnswer
from epm_events.catalog import AppInfo
from epm_events.streams import AGENT
from epm_service.bus import Bus, connect
from epm_service.settings import Settings
from pydantic import ValidationError

from epm_agent.clock import Clock, iso, system_clock
from epm_agent.device_channel import DeviceChannel, DeviceUpdate
from epm_agent.device_key import DeviceKey
from epm_agent.elevation import (
    SignedMessage,
    approval_used_message,
    describe_app,
    elevation_message,
)
from epm_agent.encryption_key import EncryptionKey
from epm_agent.enrollment import request_enrollment
from epm_agent.errors import AgentError, CredentialsRefused, ServerUnreachable, is_auth_refusal
from epm_agent.nats_tls import check_ca, read_ca_file, save_ca, stored_context, untrusted
from epm_agent.offline import PROVISIONS, Granted, OfflineAccess, PolicyDisabled, allows
from epm_agent.offline_log import LogRecord
from epm_agent.offline_state import OfflineState
from epm_agent.private_file import write_private_file
from epm_agent.self_service import Refused, read_generated_code, self_generate_request
from epm_agent.state import FINAL_STATUSES, Identity, LocalRequest, StateDir, now_iso
from epm_agent.upload import batch_message, chunks

UPLOAD_READ = 2000
"""Offline log records read from the state per round of an upload."""

UPLOAD_ACK_TIMEOUT = 10.0
"""How long an uploaded batch may wait for the stream's acknowledgement."""

RESEND_AFTER = timedelta(minutes=10)
"""Records the stream took but request-svc never confirmed are sent again after this long
(request-svc accepts each (device, sequence) once, so a second copy changes nothing)."""


@dataclass(frozen=True, slots=True)
class UploadRound:
    """One round of an upload, ready to send: each batch's records and its signed message;
    ``last``: the state held no more unsent records than these."""

    batches: list[tuple[list[LogRecord], SignedMessage]]
    last: bool


ANSWER_TIMEOUT = 3.0
"""How long a request waits on its reply subject for request-svc's answer before it
reports "open" (the message itself is safe in EPM_AGENT and will still be handled)."""

CONNECT_TIMEOUT = 2.0
_INBOX_PREFIX = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


@dataclass(frozen=True, slots=True)
class RequestOutcome:
    request_id: str
    status: str
    decided_by: str | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"request_id": self.request_id, "status": self.status}
        if self.decided_by is not None:
            out["decided_by"] = self.decided_by
        return out


@dataclass(frozen=True, slots=True)
class SyncResult:
    """``sent``: records uploaded by this sync; ``confirmed``: records of the log request-svc
    has accepted; ``pending``: records it has not processed (yet); ``refused``: records it
    refused, by the kind of alert raised (log_tampered, log_fork): in the JSON only if any."""

    sent: int
    confirmed: int
    pending: int
    refused: dict[str, list[int]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "sent": self.sent,
            "confirmed": self.confirmed,
            "pending": self.pending,
        }
        if self.refused:
            out["refused"] = sum(len(seqs) for seqs in self.refused.values())
            out["refusals"] = self.refused
        return out


@dataclass(frozen=True, slots=True)
class AgentStatus:
    device_id: str
    tenant: str
    online: bool
    policy: dict[str, Any]
    requests: tuple[LocalRequest, ...]
    locked_until: str | None = None
    key_version: int | None = None
    admin_until: str | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "device_id": self.device_id,
            "tenant": self.tenant,
            "online": self.online,
            "policy": self.policy,
            "requests": [
                {"request_id": r.request_id, "status": r.status}
                | ({"decided_by": r.decided_by} if r.decided_by else {})
                for r in self.requests
            ],
        }
        if self.locked_until is not None:
            out["locked_until"] = self.locked_until
        if self.key_version is not None:
            out["key_version"] = self.key_version
        if self.admin_until is not None:
            out["admin_until"] = self.admin_until
        return out


class Agent:
    """One device. ``offline=True`` behaves as if the server were unreachable."""

    def __init__(
        self,
        state_dir: Path | None = None,
        *,
        offline: bool = False,
        answer_timeout: float = ANSWER_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        clock: Clock = system_clock,
    ) -> None:
        self.state = StateDir(state_dir)
        self.clock = clock
        self.offline = offline
        self.answer_timeout = answer_timeout
        self.connect_timeout = connect_timeout
        self._bus: Bus | None = None

    async def __aenter__(self) -> Agent:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Disconnect (the agent is then offline until its next call) and close the state."""
        await self.disconnect()
        self.state.close()

    async def disconnect(self) -> None:
        bus, self._bus = self._bus, None
        if bus is not None:
            try:
                await bus.close()
            except Exception:  # already gone: nothing left to drain
                await bus.nc.close()

    @property
    def identity(self) -> Identity | None:
        return self._state().identity()

    # --- enrollment ------------------------------------------------------

    async def enroll(
        self,
        url: str,
        enrollment_token: str,
        hostname: str | None = None,
        *,
        nats_ca: Path | None = None,
    ) -> Identity:
        """Enroll this state dir. ``nats_ca``: a PEM file with the CA to trust for NATS
        (kept in the state dir, epm_agent.nats_tls); without it, the CA the server hands
        out (``nats.ca`` in the answer), if any."""
        state = self._state(create=True)
        existing = state.identity()
        if existing is not None:
            raise AgentError(
                f"{state.path} is already enrolled as device {existing.device_id} of tenant "
                f"{existing.tenant}; pass another --state-dir to enroll this machine again "
                "(a revoked device too: its state dir cannot be enrolled again, so enroll "
                "it with a new enrollment token and a new --state-dir)"
            )
        if self.offline:
            raise ServerUnreachable("enrollment needs the server; run it without --offline")
        # checked before the one-time token is spent
        given_ca = read_ca_file(nats_ca) if nats_ca is not None else None
        key = DeviceKey.generate()
        sealing = EncryptionKey.generate()
        hostname = hostname or socket.gethostname()
        answer = await request_enrollment(
            url,
            enrollment_token,
            key.public_key_b64(),
            hostname,
            encryption_key_b64=sealing.public_key_b64(),
        )
        if not _INBOX_PREFIX.fullmatch(answer.inbox_prefix):
            raise AgentError(
                f"the server gave an unusable inbox prefix {answer.inbox_prefix!r}; "
                "report this to the EPM operator"
            )
        ca = given_ca or answer.nats.ca
        if given_ca is None and answer.nats.ca is not None:
            try:
                check_ca(answer.nats.ca, f"the NATS CA the server at {url} handed out")
            except AgentError as exc:
                raise AgentError(
                    f"{exc}. The enrollment token is used up: report this to the EPM operator "
                    "(EPM_PUBLIC_NATS_CA), or enroll with a new token and --nats-ca FILE"
                ) from None
        key.save(state.key_path)
        sealing.save(state.encryption_key_path)
        save_ca(state.nats_ca_path, ca)
        creds_file = None
        if answer.nats.creds:
            write_private_file(state.creds_path, answer.nats.creds.encode())
            creds_file = state.creds_path.name
        identity = Identity(
            device_id=answer.device_id,
            tenant=answer.tenant,
            hostname=hostname,
            server_url=url.rstrip("/"),
            nats_url=answer.nats.url,
            inbox_prefix=answer.inbox_prefix,
            subjects=dict(answer.subjects),
            policy=dict(answer.policy),
            key_material=answer.key_material,
            nats_user=answer.nats.user,
            nats_password=answer.nats.password,
            nats_creds_file=creds_file,
            enrolled_at=now_iso(),
        )
        state.save_identity(identity)
        return identity

    # --- elevation requests ----------------------------------------------

    async def request(
        self,
        exe: str,
        *,
        user: str,
        reason: str,
        sha256: str | None = None,
        publisher: str = "",
        app_name: str = "",
        command_line: str = "",
        wait_seconds: float = 0,
    ) -> RequestOutcome:
        """Ask for elevation and return what the server answered on the same round trip
        (a rule's decision included), or "open"; with ``wait_seconds`` wait that long for
        a technician's decision on the device channel."""
        state = self._state()
        identity = state.require_identity()
        self.offline_access(identity).close_expired_sessions()
        try:
            app = describe_app(
                exe,
                sha256=sha256,
                publisher=publisher,
                app_name=app_name,
                command_line=command_line,
            )
        except ValidationError as exc:
            raise AgentError(f"cannot describe {exe}: {_first_problem(exc)}") from None
        bus = await self._connect(identity)
        if bus is None:
            raise ServerUnreachable(
                f"the server at {identity.nats_url} cannot be reached, so the request was not "
                "sent; try again when online, or run 'epm-agent offline request-code --exe "
                f"{exe}' and call the help desk"
            )
        key = DeviceKey.load(state.key_path)
        reply_to = bus.nc.new_inbox()
        # Subscribe before publishing: a rule's answer can come back before the PubAck.
        answers = await bus.nc.subscribe(reply_to)
        try:
            try:
                message = elevation_message(
                    key,
                    tenant=identity.tenant,
                    device_id=identity.device_id,
                    user=user,
                    app=app,
                    reason=reason,
                    reply_to=reply_to,
                )
            except ValidationError as exc:
                raise AgentError(f"cannot send this request: {_first_problem(exc)}") from None
            await self._publish(bus, message, identity)
            now = now_iso()
            state.record_request(
                LocalRequest(
                    request_id=message.request_id,
                    msg_id=message.msg_id,
                    status="open",
                    app=app.model_dump(mode="json"),
                    user=user,
                    reason=reason,
                    created_at=now,
                    updated_at=now,
                )
            )
            answer = await _first_answer(answers, message.request_id, self.answer_timeout)
            if answer is not None:
                state.apply_answer(answer)
        finally:
            await answers.unsubscribe()

        def decided() -> bool:
            local = state.request(message.request_id)
            return local is not None and local.status in FINAL_STATUSES

        await self._upload_quietly(bus, identity)
        # Catch up on the device channel in any case; with --wait, keep reading. The request
        # is sent by now: losing the server here leaves it open, which is still the answer.
        with contextlib.suppress(ServerUnreachable):
            await self._read_device_channel(
                bus, identity, until=decided if wait_seconds > 0 else None, timeout=wait_seconds
            )
        local = state.request(message.request_id)
        if local is None:  # recorded above; only a deleted state file gets here
            raise AgentError(f"request {message.request_id} vanished from {state.db_path}")
        if spends_a_grant(local):
            # The user elevates on this answer: the once-approval is used here, and the
            # grant it issued must not answer the user's next request too.
            state.mark_used(local.request_id)
            await self._report_uses_quietly(identity)
        return RequestOutcome(local.request_id, local.status, local.decided_by)

    async def _publish(self, bus: Bus, message: SignedMessage, identity: Identity) -> None:
        try:
            await bus.js.publish(
                message.subject,
                message.body,
                stream=AGENT.name,
                headers=message.headers,
                timeout=max(self.connect_timeout, 5.0),
            )
        except nats.js.errors.NoStreamResponseError:
            raise AgentError(
                f"the server at {identity.nats_url} has no {AGENT.name} stream to take "
                "requests; an operator must run 'epm streams apply'"
            ) from None
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            raise ServerUnreachable(
                f"the server at {identity.nats_url} did not confirm the request "
                f"({type(exc).__name__}); it may not have been sent: try again"
            ) from None

    # --- status and the device channel -------------------------------------

    async def status(self) -> AgentStatus:
        """This device and its requests, after reading the device channel when online."""
        state = self._state()
        identity = state.require_identity()
        bus = await self._connect(identity)
        online = bus is not None
        if bus is not None:
            await self._upload_quietly(bus, identity)
            try:
                await self._read_device_channel(bus, identity)
            except ServerUnreachable:
                online = False
        identity = state.require_identity()  # the channel may have brought a new policy
        offline = self.offline_access(identity)
        offline.close_expired_sessions()
        now = self.clock()
        lockout = offline.lockout()
        sessions = offline.admin_sessions()
        versions = offline.tables.key_materials()
        return AgentStatus(
            device_id=identity.device_id,
            tenant=identity.tenant,
            online=online,
            policy=identity.policy,
            requests=tuple(state.requests()),
            locked_until=iso(lockout.locked_until)
            if lockout.locked_until and lockout.locked(now)
            else None,
            key_version=versions[0][0] if versions else None,
            admin_until=iso(max(s.ends_at for s in sessions)) if sessions else None,
        )

    # --- offline codes ---------------------------------------------------------------

    def offline_access(self, identity: Identity | None = None) -> OfflineAccess:
        state = self._state()
        return OfflineAccess(state, identity or state.require_identity(), self.clock)

    async def offline_request_code(
        self,
        *,
        exe: str | None = None,
        sha256: str | None = None,
        admin_minutes: int | None = None,
        user: str = "",
    ) -> str:
        """A 6-digit request code for the help desk (no server needed)."""
        offline = self.offline_access()
        offline.close_expired_sessions()
        app = self._describe(exe, sha256) if exe or sha256 else None
        return offline.request_code(app=app, admin_minutes=admin_minutes, user=user)

    async def offline_respond(self, code: str, *, user: str = "") -> Granted:
        offline = self.offline_access()
        offline.close_expired_sessions()
        return offline.respond(code, user=user)

    async def offline_redeem(
        self, code: str, *, exe: str | None = None, sha256: str | None = None, user: str = ""
    ) -> Granted:
        offline = self.offline_access()
        offline.close_expired_sessions()
        app = self._describe(exe, sha256) if exe or sha256 else None
        return offline.redeem(code, app=app, user=user)

    async def offline_generate(
        self,
        purpose: str,
        *,
        exe: str | None = None,
        sha256: str | None = None,
        minutes: int | None = None,
        timeout: float = 10.0,
    ) -> dict[str, Any]:
        """One offline access code for this device, made by the server (online only).

        The device channel is read before (policy, keys) and after: the server made the
        code under its policy, so the agent waits briefly for that policy to reach it too;
        otherwise a code generated right after the administrator enabled it would be
        refused offline by the policy the agent had before."""
        state = self._state()
        identity = state.require_identity()
        self.offline_access(identity).close_expired_sessions()
        app = self._describe(exe, sha256) if exe or sha256 else None
        bus = await self._connect(identity)
        if bus is None:
            raise ServerUnreachable(
                f"the server at {identity.nats_url} cannot be reached: generating an offline "
                "code needs it (codes are for later, when you are offline)"
            )
        await self._read_device_channel(bus, identity)
        message = self_generate_request(
            DeviceKey.load(state.key_path),
            tenant=identity.tenant,
            device_id=identity.device_id,
            purpose=purpose,
            now=self.clock(),
            sha256=app.sha256 if app else None,
            minutes=minutes,
        )
        try:
            reply = await bus.nc.request(
                message.subject, message.body, timeout=timeout, headers=message.headers
            )
        except nats.errors.NoRespondersError:
            raise AgentError(
                "nobody answers device commands on the server (approval-svc is not running); "
                "try again later"
            ) from None
        except (nats.errors.TimeoutError, TimeoutError):
            raise ServerUnreachable("the server did not answer in time; try again") from None
        await self._upload_quietly(bus, identity)
        try:
            generated = read_generated_code(
                reply.data,
                EncryptionKey.load(state.encryption_key_path),
                tenant=identity.tenant,
                device_id=identity.device_id,
                msg_id=message.msg_id,
            )
        except Refused as exc:
            if exc.provision in PROVISIONS:
                raise PolicyDisabled(str(exc.provision)) from None
            raise
        await self._read_device_channel(
            bus,
            identity,
            until=lambda: redeemable(state.require_identity().policy, purpose),
            timeout=POLICY_WAIT_SECONDS,
        )
        return generated

    def _describe(self, exe: str | None, sha256: str | None) -> AppInfo:
        try:
            return describe_app(exe or sha256 or "", sha256=sha256)
        except ValidationError as exc:
            raise AgentError(f"cannot describe {exe}: {_first_problem(exc)}") from None

    # --- the offline log: upload and confirmation -------------------------------------

    async def sync(self, wait_seconds: float = 10.0) -> SyncResult:
        """Upload every unsent offline log record, then read the device channel (decisions,
        policy, keys, and the server's confirmations) until all sent records are confirmed
        or ``wait_seconds`` pass."""
        state = self._state()
        identity = state.require_identity()
        self.offline_access(identity).close_expired_sessions()
        bus = await self._connect(identity)
        if bus is None:
            raise ServerUnreachable(
                f"the server at {identity.nats_url} cannot be reached; the offline log stays "
                "here and is uploaded at the next 'epm-agent sync' (or status, request)"
            )
        sent = await self.upload(bus, identity)
        with contextlib.suppress(AgentError):
            await self.report_uses(bus, identity)
        tables = OfflineState(state)

        def all_confirmed() -> bool:
            _, sent_total, confirmed = tables.upload_counts()
            return confirmed >= sent_total

        await self._read_device_channel(bus, identity)
        if not all_confirmed() and wait_seconds > 0:
            await self._read_device_channel(
                bus, identity, until=all_confirmed, timeout=wait_seconds
            )
        records, _, processed = tables.upload_counts()
        refused = tables.refused()
        return SyncResult(
            sent=sent,
            confirmed=processed - sum(len(seqs) for seqs in refused.values()),
            pending=records - processed,
            refused=refused,
        )

    def prepare_upload(self, identity: Identity) -> UploadRound:
        """The device's own part of an upload round: its oldest unsent records (and those
        the server never confirmed), read from the state, cut into batches and each batch
        signed. Nothing is sent and nothing marked."""
        state = self._state()
        records = OfflineState(state).unsent(UPLOAD_READ, iso(self.clock() - RESEND_AFTER))
        if not records:
            return UploadRound([], last=True)
        key = DeviceKey.load(state.key_path)
        batches = [
            (
                chunk,
                batch_message(
                    key, tenant=identity.tenant, device_id=identity.device_id, records=chunk
                ),
            )
            for chunk in chunks(records)
        ]
        return UploadRound(batches, last=len(records) < UPLOAD_READ)

    async def upload(
        self, bus: Bus, identity: Identity, prepared: UploadRound | None = None
    ) -> int:
        """Send unsent records in signed batches with publish_async; a batch's records are
        marked sent once the stream acknowledged it, so an upload cut short resumes at the
        first unacknowledged batch. Returns how many records were sent.

        ``prepared``: the first round, made by ``prepare_upload`` beforehand (the replay
        storm's simulated devices sign before its clock starts, as each would on its own
        machine); later rounds are read as they come."""
        sent = 0
        while True:
            current = prepared if prepared is not None else self.prepare_upload(identity)
            prepared = None
            if not current.batches:
                break
            acked: list[list[LogRecord]] = []
            try:
                try:
                    await self.send_upload(bus, current, acked)
                finally:  # what the stream acknowledged is sent, even if a later batch failed
                    sent += self.mark_sent(acked)
            except nats.js.errors.NoStreamResponseError:
                raise AgentError(
                    f"the server at {identity.nats_url} has no {AGENT.name} stream to take "
                    "the offline log; an operator must run 'epm streams apply'"
                ) from None
            except (nats.errors.Error, TimeoutError, OSError) as exc:
                await self.disconnect()
                raise ServerUnreachable(
                    f"lost the server at {identity.nats_url} while uploading the offline log "
                    f"({type(exc).__name__}); {sent} records were sent, the rest go at the "
                    "next sync"
                ) from None
            if current.last:
                break
        return sent

    async def send_upload(
        self, bus: Bus, current: UploadRound, acked: list[list[LogRecord]]
    ) -> None:
        """Publish a prepared round with publish_async and add each batch the stream
        acknowledged to ``acked``, in order, stopping at the first that fails (raised).
        Nothing is marked: that is ``mark_sent``'s, for what ``acked`` holds."""
        pending = []
        try:
            for chunk, message in current.batches:
                fut = await bus.js.publish_async(
                    message.subject, message.body, headers=message.headers
                )
                pending.append((chunk, fut))
            for chunk, fut in pending:
                async with asyncio.timeout(UPLOAD_ACK_TIMEOUT):
                    await fut
                acked.append(chunk)
        finally:
            for _, fut in pending:
                if not fut.done():
                    fut.cancel()

    def mark_sent(self, acked: list[list[LogRecord]]) -> int:
        """Mark the acknowledged batches' records sent (a contiguous run: batches are
        acknowledged in order); how many."""
        if not acked:
            return 0
        OfflineState(self._state()).mark_sent(acked[0][0].seq, acked[-1][-1].seq, iso(self.clock()))
        return sum(len(chunk) for chunk in acked)

    async def report_uses(self, bus: Bus, identity: Identity) -> int:
        """Tell the server of every once-approval the user used that it was not told of
        (``ApprovalUsed``); each is marked reported once the stream acknowledged it.
        Returns how many were reported."""
        state = self._state()
        pending = state.unreported_uses()
        if not pending:
            return 0
        key = DeviceKey.load(state.key_path)
        for request_id in pending:
            message = approval_used_message(
                key, tenant=identity.tenant, device_id=identity.device_id, request_id=request_id
            )
            await self._publish(bus, message, identity)
            state.mark_use_reported(request_id)
        return len(pending)

    async def _upload_quietly(self, bus: Bus, identity: Identity) -> None:
        """Whenever the agent reaches the server it uploads its offline log and reports the
        approvals it used; a failure here must not fail the command that got it online (the
        next contact tries again)."""
        with contextlib.suppress(AgentError):
            await self.upload(bus, identity)
            await self.report_uses(bus, identity)

    async def _report_uses_quietly(self, identity: Identity) -> None:
        """``report_uses`` on the connection there is, or a new one; offline or failing: at
        the next contact."""
        with contextlib.suppress(AgentError):
            bus = await self._connect(identity)
            if bus is not None:
                await self.report_uses(bus, identity)

    async def sync_device_channel(self, timeout: float = 10.0) -> list[DeviceUpdate]:
        """Apply every decision sent to this device since the last read."""
        identity = self._state().require_identity()
        bus = await self._connect(identity)
        if bus is None:
            raise ServerUnreachable(
                f"the server at {identity.nats_url} cannot be reached; nothing was read"
            )
        return await self._read_device_channel(bus, identity, timeout=timeout)

    async def _read_device_channel(
        self,
        bus: Bus,
        identity: Identity,
        *,
        until: Callable[[], bool] | None = None,
        timeout: float = 10.0,
    ) -> list[DeviceUpdate]:
        channel = DeviceChannel(bus.js, self._state(), identity)
        try:
            return await channel.read(until=until, timeout=max(timeout, self.connect_timeout))
        except (nats.errors.ConnectionClosedError, nats.errors.TimeoutError, TimeoutError) as exc:
            await self.disconnect()
            raise ServerUnreachable(
                f"lost the server at {identity.nats_url} while reading decisions "
                f"({type(exc).__name__})"
            ) from None

    # --- connection --------------------------------------------------------

    async def _connect(self, identity: Identity) -> Bus | None:
        """The connection to NATS, or None when offline (by choice or because unreachable)."""
        if self.offline:
            return None
        if self._bus is not None and self._bus.nc.is_connected:
            return self._bus
        await self.disconnect()
        state = self._state()
        tls = stored_context(state.nats_ca_path)
        # model_construct: these four values are the whole configuration of an agent's
        # connection; reading the environment for the rest costs ~15 ms per connect
        settings = Settings.model_construct(
            nats_url=identity.nats_url,
            nats_user=identity.nats_user,
            nats_password=identity.nats_password,
            nats_creds=str(state.path / identity.nats_creds_file)
            if identity.nats_creds_file
            else None,
        )

        async def quiet(*_: object) -> None:
            """Being offline is an answer for an agent, not an error to log."""

        connecting = connect(
            settings,
            name=f"epm-agent {identity.tenant}/{identity.device_id}",
            inbox_prefix=identity.inbox_prefix,
            allow_reconnect=False,
            # nats-py: 0 would mean "retry forever"; 1 is one retry, then NoServersError
            max_reconnect_attempts=1,
            reconnect_time_wait=0.1,
            connect_timeout=self.connect_timeout,
            error_cb=quiet,
            disconnected_cb=quiet,
            reconnected_cb=quiet,
            closed_cb=quiet,
            **({"tls": tls} if tls is not None else {}),
        )
        try:
            async with asyncio.timeout(3 * self.connect_timeout):
                self._bus = await connecting
        except ssl.SSLCertVerificationError as exc:
            raise untrusted(identity.nats_url, state.nats_ca_path, exc) from None
        except nats.errors.Error as exc:
            if is_auth_refusal(exc):  # reached the server, which said no: not "offline"
                raise CredentialsRefused(identity.nats_url, state.path, str(exc)) from None
            return None
        except (TimeoutError, OSError):
            return None
        return self._bus

    def _state(self, *, create: bool = False) -> StateDir:
        if not self.state.is_open:
            self.state.open(create=create)
        return self.state


async def _first_answer(answers: Any, request_id: str, timeout: float) -> RequestAnswer | None:
    """The answer for this request on the reply subject, or None when nobody answered."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            msg = await answers.next_msg(timeout=left)
        except (nats.errors.TimeoutError, TimeoutError):
            return None
        try:
            answer = RequestAnswer.model_validate_json(msg.data)
        except ValidationError:
            continue
        if answer.request_id == request_id:
            return answer
    return None


POLICY_WAIT_SECONDS = 3.0
"""How long ``offline generate`` waits for the policy the server made its code under."""


def spends_a_grant(local: LocalRequest) -> bool:
    """Whether using this request's answer spends a one-time grant: a technician's
    once-approval (an approval by a grant spent that grant when it was made)."""
    return (
        local.status == "approved"
        and local.scope == "once"
        and not (local.decided_by or "").startswith("grant:")
    )


def redeemable(policy: dict[str, Any], purpose: str) -> bool:
    """Whether this policy lets the agent redeem a code of ``purpose`` offline."""
    return allows(policy, f"{purpose}_codes")


def _first_problem(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "value"
    return f"{where}: {err['msg']}"
