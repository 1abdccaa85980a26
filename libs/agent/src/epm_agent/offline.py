"""Offline codes on the device: request codes, help-desk responses, offline access codes.

Works with no network: everything it needs is in the state dir (the policy last
received, the sealed key material, the challenges, the used counters, the
lockout). Every good code is recorded in the offline log (OfflineCodeRedeemed,
then ElevationPerformed or AdminSessionStarted) in the same transaction that
spends it, before the caller is told it may go ahead.
"""

from __future__ import annotations

import getpass
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, NoReturn

from epm_domain.offline_codes import (
    CodeError,
    access_code_hash,
    code_hash,
    from_text,
    new_request_code,
    read_access_code,
)
from epm_domain.sealed import DeviceKeys, SealedError, open_device_keys
from epm_events.catalog import AppInfo

from epm_agent.access_codes import check_access_code
from epm_agent.challenges import Challenge, find_match, max_admin_minutes
from epm_agent.clock import Clock, iso
from epm_agent.encryption_key import EncryptionKey
from epm_agent.errors import AgentError
from epm_agent.lockout import Lockout, may_try
from epm_agent.offline_state import AdminSession, OfflineState, Redemption
from epm_agent.state import Identity, StateDir

PROVISIONS: dict[str, str] = {
    "challenge_response": "offline challenge-response (help-desk response codes)",
    "app_codes": "offline application codes",
    "admin_codes": "offline admin codes",
    "self_service": "generating your own offline codes",
}


class PolicyDisabled(AgentError):
    def __init__(self, provision: str) -> None:
        super().__init__(
            f"your administrator disabled {PROVISIONS[provision]} for this computer "
            f"(offline policy: {provision}=false, as this computer last heard it; if it was "
            "enabled since, connect once, e.g. 'epm-agent status', to learn the new policy)"
        )
        self.provision = provision


class CodeRefused(AgentError):
    """A code that does not grant anything; ``reason`` is machine-readable."""

    def __init__(self, reason: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.reason = reason
        self.extra = extra


@dataclass(frozen=True, slots=True)
class Granted:
    grant: Literal["app", "admin"]
    minutes: int = 0
    ends_at: datetime | None = None
    app: AppInfo | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"granted": True, "grant": self.grant}
        if self.grant == "admin":
            out["minutes"] = self.minutes
            out["ends_at"] = iso(self.ends_at) if self.ends_at else None
        if self.app is not None:
            out["sha256"] = self.app.sha256
        return out


POLICY_DEFAULTS = {"challenge_response": True, "app_codes": True}
"""What a policy that does not name a provision allows (the rest is off)."""


def allows(policy: Mapping[str, Any], provision: str) -> bool:
    return bool(policy.get(provision, POLICY_DEFAULTS.get(provision, False)))


def require(policy: Mapping[str, Any], provision: str) -> None:
    if not allows(policy, provision):
        raise PolicyDisabled(provision)


def current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


class OfflineAccess:
    """One device's offline codes. ``clock`` gives the time (EPM_AGENT_NOW in tests)."""

    def __init__(self, state: StateDir, identity: Identity, clock: Clock) -> None:
        self.state = state
        self.tables = OfflineState(state)
        self.identity = identity
        self.clock = clock

    # --- admin sessions end on time ----------------------------------------------------

    def close_expired_sessions(self) -> list[AdminSession]:
        """Write AdminSessionEnded (at the end time) for each session whose time ran out,
        however long ago: every agent command starts here, so a reboot cannot extend one."""
        now = self.clock()
        ended = []
        for session in self.tables.open_admin_sessions():
            if session.ends_at <= now and self.tables.end_admin_session(
                self.identity.device_id, session
            ):
                ended.append(session)
        return ended

    def admin_sessions(self) -> list[AdminSession]:
        return self.tables.open_admin_sessions()

    def lockout(self) -> Lockout:
        return self.tables.lockout()

    # --- challenge-response --------------------------------------------------------------

    def request_code(
        self, *, app: AppInfo | None = None, admin_minutes: int | None = None, user: str = ""
    ) -> str:
        policy = self.identity.policy
        require(policy, "challenge_response")
        self._keys()  # no key material, no answer can ever verify: say so now
        self._may_try()
        if admin_minutes is not None:
            most = max_admin_minutes(policy)
            if not 1 <= admin_minutes <= most:
                raise AgentError(
                    f"full admin can be asked for 1 to {most} minutes on this computer "
                    "(offline policy: max_admin_minutes)"
                )
            grant: Literal["app", "admin"] = "admin"
        elif app is not None:
            grant = "app"
        else:
            raise AgentError("say what the code is for: --exe PATH, or --admin MINUTES")
        try:
            code = new_request_code(self.tables.request_codes_shown())
        except CodeError as exc:
            raise AgentError(str(exc)) from None
        self.tables.add_challenge(
            Challenge(
                request_code=code,
                grant=grant,
                created_at=self.clock(),
                user=user or current_user(),
                sha256=app.sha256 if app else None,
                app=app.model_dump(mode="json") if app else None,
                minutes=admin_minutes or 0,
            )
        )
        return code

    def respond(self, entered: str, user: str = "") -> Granted:
        policy = self.identity.policy
        require(policy, "challenge_response")
        current, _ = self._keys()
        self._may_try()
        _well_formed(entered)
        now = self.clock()
        pending = [c for c in self.tables.challenges("pending") if c.open_at(now)]
        match = find_match(current, pending, policy, entered)
        if match is None:
            answered = self.tables.answered_by(code_hash(entered))
            if answered:
                raise CodeRefused(
                    "used", f"this response code was used already (at {answered}); it works once"
                )
            if not pending:
                raise CodeRefused(
                    "no_request",
                    "no request code is waiting for an answer on this computer: run "
                    "'epm-agent offline request-code' and give the help desk the code it shows",
                )
            self._wrong("wrong response code", [c.request_code for c in pending])
        challenge, grant = match.challenge, match.grant
        who = user or challenge.user
        redeemed = {
            "kind": "response",
            "code_ref": f"response:v{current.key_version}:{code_hash(entered)}",
            "code_hash": code_hash(entered),
            "grant": grant.grant,
            "user": who,
        }
        if grant.grant == "app":
            app = AppInfo.model_validate(challenge.app)
            return self._grant(
                Redemption(
                    who,
                    [("OfflineCodeRedeemed", redeemed), _elevation(who, app)],
                    request_code=challenge.request_code,
                    response_hash=code_hash(entered),
                ),
                Granted("app", app=app),
            )
        return self._admin(
            who,
            grant.minutes,
            redeemed,
            request_code=challenge.request_code,
            response_hash=code_hash(entered),
        )

    # --- offline access codes ---------------------------------------------------------

    def redeem(self, entered: str, *, app: AppInfo | None = None, user: str = "") -> Granted:
        policy = self.identity.policy
        current, retired = self._keys()
        _well_formed(entered)
        claimed = read_access_code(entered)
        if claimed.purpose == "admin":
            require(policy, "admin_codes")
            if app is not None:
                raise CodeRefused(
                    "purpose",
                    "this is a full-admin code, not an application code: redeem it without --exe",
                )
        else:
            require(policy, "app_codes")
            if app is None:
                raise CodeRefused(
                    "purpose",
                    "this code elevates an application: run it with --exe PATH of that application",
                )
        self._may_try()
        now = self.clock()
        try:
            checked = check_access_code(
                current, retired, entered, now.date(), app.sha256 if app else None
            )
        except CodeError as exc:
            raise CodeRefused(exc.reason, str(exc)) from None
        if checked.verdict == "invalid":
            self._wrong(checked.message)
        if checked.verdict != "valid" or checked.code is None:
            raise CodeRefused(checked.verdict, checked.message)
        code = checked.code
        used_at = self.tables.counter_used_at(checked.key_version, code.counter)
        if used_at:
            raise CodeRefused("used", f"this code was used already (at {used_at}); it works once")
        who = user or current_user()
        redeemed = {
            "kind": "access_code",
            "code_ref": f"access_code:v{checked.key_version}:{code.counter}",
            "code_hash": access_code_hash(entered, current.access_code),
            "grant": code.purpose,
            "user": who,
        }
        counter = (code.purpose, checked.key_version, code.counter)
        if code.purpose == "admin":
            if code.minutes > max_admin_minutes(policy):
                raise CodeRefused(
                    "policy",
                    f"this code grants {code.minutes} minutes of full admin, more than this "
                    f"computer's policy now allows ({max_admin_minutes(policy)}); ask for a new "
                    "code",
                )
            return self._admin(who, code.minutes, redeemed, counter=counter)
        assert app is not None
        return self._grant(
            Redemption(
                who, [("OfflineCodeRedeemed", redeemed), _elevation(who, app)], counter=counter
            ),
            Granted("app", app=app),
        )

    # --- shared ------------------------------------------------------------------------

    def _admin(self, user: str, minutes: int, redeemed: dict[str, Any], **spend: Any) -> Granted:
        ends_at = self.clock() + timedelta(minutes=minutes)
        return self._grant(
            Redemption(
                user,
                [
                    ("OfflineCodeRedeemed", redeemed),
                    ("AdminSessionStarted", {"user": user, "minutes": minutes}),
                ],
                admin_minutes=minutes,
                admin_ends_at=ends_at,
                **spend,
            ),
            Granted("admin", minutes=minutes, ends_at=ends_at),
        )

    def _grant(self, redemption: Redemption, granted: Granted) -> Granted:
        # Recorded (and the code spent) before the caller may do anything privileged.
        self.tables.redeem(self.identity.device_id, self.clock(), redemption)
        return granted

    def _may_try(self) -> None:
        wait = may_try(self.tables.lockout(), self.clock())
        if wait is not None:
            raise CodeRefused(
                "locked" if wait.locked else "wait",
                wait.message,
                retry_after=wait.seconds,
                **({"locked_until": iso(wait.until)} if wait.locked else {}),
            )

    def _wrong(self, what: str, request_codes: list[str] | None = None) -> NoReturn:
        now = self.clock()
        outcome = self.tables.record_failure(now, request_codes or [])
        lockout = outcome.lockout
        if lockout.locked(now) and lockout.locked_until is not None:
            minutes = round(lockout.cooloff_seconds / 60)
            raise CodeRefused(
                "locked",
                f"{what}. Too many wrong codes: offline codes are locked on this computer for "
                f"{minutes} minutes (until {iso(lockout.locked_until)}); ask the help desk to "
                "lift the lockout, or wait"
                + (" and ask for a new request code" if outcome.spent else ""),
                locked_until=iso(lockout.locked_until),
            )
        left = lockout.tries_left()
        raise CodeRefused(
            "wrong",
            f"{what}: check it and try again ({left} {'try' if left == 1 else 'tries'} left "
            "before offline codes lock on this computer)",
            tries_left=left,
        )

    def _keys(self) -> tuple[DeviceKeys, list[DeviceKeys]]:
        """The key version in use and the retired ones, opened with the encryption key."""
        materials = OfflineState(self.state).key_materials()
        if not materials:
            raise AgentError(
                "this computer has no offline key material, so offline codes cannot work here: "
                "it was enrolled without an encryption key; enroll it again with this agent"
            )
        key = EncryptionKey.load(self.state.encryption_key_path)
        opened = []
        for _, material in materials:
            try:
                opened.append(
                    open_device_keys(
                        material, key.private_raw, self.identity.tenant, self.identity.device_id
                    )
                )
            except SealedError:
                continue
        if not opened:
            raise AgentError(
                "this computer's offline key material does not open with its encryption key; "
                "enroll it again"
            )
        return opened[0], opened[1:]


def _well_formed(entered: str) -> None:
    try:
        from_text(entered)
    except CodeError as exc:
        raise CodeRefused("format", f"{exc}; check what you typed") from None


def _elevation(user: str, app: AppInfo) -> tuple[str, dict[str, Any]]:
    return "ElevationPerformed", {"user": user, "app": app.model_dump(mode="json")}
