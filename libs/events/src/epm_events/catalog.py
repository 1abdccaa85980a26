"""The event catalog: one frozen pydantic model per domain event.

Each model names its aggregate and the field holding the aggregate id, so the
subject ``epm.evt.<tenant>.<aggregate>.<aggregate_id>.<EventName>`` is derived
from the event itself. ``VERSION`` is the schema version written today; older
versions still in the stream are lifted by ``epm_events.upcasters``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["msp_admin", "msp_technician", "tenant_admin", "tenant_technician", "integrator"]
Scope = Literal["once", "tenant", "global"]
Effect = Literal["allow", "deny"]
GrantKind = Literal["app", "admin"]
ActorKind = Literal["technician", "rule", "agent", "system"]

Sha256 = str  # lowercase hex; validated where it enters (agent intake, rule creation)


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Event(Model):
    """Base of every domain event."""

    NAME: ClassVar[str]
    VERSION: ClassVar[int] = 1
    AGGREGATE: ClassVar[str]
    ID_FIELD: ClassVar[str]

    @property
    def aggregate_id(self) -> str:
        return str(getattr(self, self.ID_FIELD))

    @classmethod
    def type_name(cls) -> str:
        return event_type_name(cls.NAME, cls.VERSION)


def event_type_name(name: str, version: int) -> str:
    """The CloudEvents ``type``: ``epm.<EventName>.v<N>``."""
    return f"epm.{name}.v{version}"


# --- shared value objects -------------------------------------------------


class AppInfo(Model):
    """What an elevation is about; requests, rules and audit records share it."""

    file_name: str = Field(max_length=260)
    sha256: Sha256 = Field(pattern=r"^[0-9a-f]{64}$")
    publisher: str = Field(default="", max_length=256)
    app_name: str = Field(default="", max_length=256)
    path: str = Field(default="", max_length=1024)
    command_line: str = Field(default="", max_length=4096)


class RuleMatch(Model):
    sha256: Sha256 | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    publisher: str | None = None
    app_name: str | None = None
    file_name: str | None = None
    path: str | None = None


class OfflinePolicy(Model):
    challenge_response: bool = True
    app_codes: bool = True
    admin_codes: bool = False
    self_service: bool = False
    max_admin_minutes: int = Field(default=60, ge=1, le=24 * 60)
    # a help-desk response may grant "this application" without naming its SHA-256 ("*")
    response_any_app: bool = False


class Actor(Model):
    kind: ActorKind
    id: str


# --- gateway: tenants and tokens ------------------------------------------


class TenantCreated(Event):
    NAME = "TenantCreated"
    VERSION = 2
    AGGREGATE = "tenant"
    ID_FIELD = "tenant_id"
    tenant_id: str
    name: str = Field(min_length=1, max_length=200)
    created_by: str


class TokenIssued(Event):
    NAME = "TokenIssued"
    AGGREGATE = "token"
    ID_FIELD = "token_id"
    token_id: str
    name: str = Field(min_length=1, max_length=200)
    role: Role
    tenant_id: str | None = None
    token_hash: str
    issued_by: str
    expires_at: datetime | None = None


class TokenRevoked(Event):
    NAME = "TokenRevoked"
    AGGREGATE = "token"
    ID_FIELD = "token_id"
    token_id: str
    revoked_by: str


# --- request-svc: enrollment, devices, requests ----------------------------


class EnrollmentTokenCreated(Event):
    NAME = "EnrollmentTokenCreated"
    AGGREGATE = "enrollment"
    ID_FIELD = "enrollment_id"
    enrollment_id: str
    token_hash: str
    expires_at: datetime
    created_by: str


class EnrollmentTokenUsed(Event):
    """The one use of an enrollment token; appended with the token's last sequence
    as expectation, so two devices racing with one token cannot both enroll."""

    NAME = "EnrollmentTokenUsed"
    AGGREGATE = "enrollment"
    ID_FIELD = "enrollment_id"
    enrollment_id: str
    device_id: str


class DeviceEnrolled(Event):
    NAME = "DeviceEnrolled"
    AGGREGATE = "device"
    ID_FIELD = "device_id"
    device_id: str
    hostname: str = Field(max_length=255)
    public_key: str  # Ed25519, base64
    enrollment_id: str
    key_version: int = 1
    encryption_key: str | None = None  # X25519, base64: offline key material is sealed to it


class DeviceRevoked(Event):
    NAME = "DeviceRevoked"
    AGGREGATE = "device"
    ID_FIELD = "device_id"
    device_id: str
    revoked_by: str
    reason: str = ""


class DeviceKeyRotated(Event):
    """A device's offline key version moves on: every code of an older version stops working.
    On the device's offline-key aggregate (approval-svc), with the codes issued under it."""

    NAME = "DeviceKeyRotated"
    AGGREGATE = "devicekey"
    ID_FIELD = "device_id"
    device_id: str
    key_version: int
    reason: str = ""
    rotated_by: str = ""


class OfflineLockoutLifted(Event):
    """The help desk ends a device's offline-code lockout (wrong codes) now: approval-svc
    sends the device a LockoutLift on ``epm.device.<t>.<d>.lockout``, applied when the agent
    next reads its device channel online. On the device's offline-key aggregate."""

    NAME = "OfflineLockoutLifted"
    AGGREGATE = "devicekey"
    ID_FIELD = "device_id"
    device_id: str
    lifted_by: str
    reason: str = Field(default="", max_length=500)


class RequestCreated(Event):
    NAME = "RequestCreated"
    AGGREGATE = "request"
    ID_FIELD = "request_id"
    request_id: str
    device_id: str
    user: str = Field(max_length=256)
    app: AppInfo
    reason: str = Field(default="", max_length=2000)
    created_at: datetime
    expires_at: datetime


class RequestExpired(Event):
    NAME = "RequestExpired"
    AGGREGATE = "request"
    ID_FIELD = "request_id"
    request_id: str


class Approved(Event):
    NAME = "Approved"
    AGGREGATE = "request"
    ID_FIELD = "request_id"
    request_id: str
    scope: Scope
    by: Actor
    rule_id: str | None = None
    grant_id: str | None = None
    reason: str = ""


class Denied(Event):
    NAME = "Denied"
    AGGREGATE = "request"
    ID_FIELD = "request_id"
    request_id: str
    scope: Scope
    by: Actor
    rule_id: str | None = None
    reason: str = ""


# --- approval-svc: rules, grants, offline ---------------------------------


class RuleCreated(Event):
    NAME = "RuleCreated"
    AGGREGATE = "rule"
    ID_FIELD = "rule_id"
    rule_id: str
    name: str = Field(min_length=1, max_length=200)
    scope: Literal["tenant", "global"]
    effect: Effect
    match: RuleMatch
    created_by: str
    source_request_id: str | None = None


class RuleProposed(Event):
    """The rule a technician's tenant/global decision will create (``rule_id``), as the
    technician left it; appended just before the decision. If approval-svc stops between
    the decision and its RuleCreated, the rule still owed is created exactly so
    (epm_approval.owed_rules). A new event type rather than new fields on Approved/Denied:
    a service not upgraded yet dead-letters a type it does not know and goes on, where a
    field it does not know would make it refuse the decision itself."""

    NAME = "RuleProposed"
    AGGREGATE = "ruleproposal"
    ID_FIELD = "rule_id"
    rule_id: str
    request_id: str
    name: str = Field(min_length=1, max_length=200)
    match: RuleMatch


class RuleDisabled(Event):
    NAME = "RuleDisabled"
    AGGREGATE = "rule"
    ID_FIELD = "rule_id"
    rule_id: str
    disabled_by: str


class GrantConsumed(Event):
    NAME = "GrantConsumed"
    AGGREGATE = "grant"
    ID_FIELD = "grant_id"
    grant_id: str
    request_id: str
    user: str
    sha256: Sha256


class OfflinePolicyChanged(Event):
    NAME = "OfflinePolicyChanged"
    AGGREGATE = "policy"
    ID_FIELD = "tenant_id"
    tenant_id: str
    policy: OfflinePolicy
    changed_by: str


class TenantKeyCreated(Event):
    NAME = "TenantKeyCreated"
    AGGREGATE = "tenantkey"
    ID_FIELD = "tenant_id"
    tenant_id: str
    key_version: int
    ciphertext: str  # AES-256-GCM under EPM_MASTER_KEY, base64(nonce || ct)


class OfflineResponseIssued(Event):
    NAME = "OfflineResponseIssued"
    AGGREGATE = "devicekey"
    ID_FIELD = "device_id"
    device_id: str
    response_id: str
    grant: GrantKind
    sha256: str | None = None
    minutes: int | None = None
    key_version: int
    issued_by: str


class OfflineCodeIssued(Event):
    NAME = "OfflineCodeIssued"
    AGGREGATE = "devicekey"
    ID_FIELD = "device_id"
    device_id: str
    code_id: str
    purpose: GrantKind
    counter: int
    code_hash: str  # epm_domain.offline_codes.access_code_hash: keyed, never the code
    sha256: str | None = None
    minutes: int | None = None
    expires_at: datetime
    issued_by: str
    key_version: int = 1
    self_generated: bool = False


# --- offline records replayed by agents (request-svc) ----------------------


class OfflineRecord(Event):
    """Common fields of everything an agent did offline and replays later."""

    device_id: str
    device_seq: int = Field(ge=1)
    device_time: datetime
    record_hash: str


class OfflineCodeRedeemed(OfflineRecord):
    NAME = "OfflineCodeRedeemed"
    AGGREGATE = "device"
    ID_FIELD = "device_id"
    kind: Literal["response", "access_code"]
    code_ref: str  # counter or response id, never the code
    grant: GrantKind
    user: str = ""
    # the code entered as OfflineCodeIssued has it (an access code:
    # epm_domain.offline_codes.access_code_hash, keyed by the device; a response code:
    # code_hash): lets request-svc see one code redeemed twice, also on two devices
    code_hash: str | None = None


class ElevationPerformed(OfflineRecord):
    NAME = "ElevationPerformed"
    AGGREGATE = "device"
    ID_FIELD = "device_id"
    user: str
    app: AppInfo


class AdminSessionStarted(OfflineRecord):
    NAME = "AdminSessionStarted"
    AGGREGATE = "device"
    ID_FIELD = "device_id"
    user: str
    minutes: int


class AdminSessionEnded(OfflineRecord):
    NAME = "AdminSessionEnded"
    AGGREGATE = "device"
    ID_FIELD = "device_id"
    user: str


class SecurityAlertRaised(Event):
    NAME = "SecurityAlertRaised"
    AGGREGATE = "alert"
    ID_FIELD = "alert_id"
    alert_id: str
    kind: str  # e.g. bad_signature, unknown_device, tenant_mismatch, code_reuse, log_gap, log_fork
    severity: Literal["low", "medium", "high"] = "high"
    device_id: str | None = None
    reason: str
    evidence: dict[str, Any] = Field(default_factory=dict)


# --- notify-svc -------------------------------------------------------------


class NotificationChannelAdded(Event):
    NAME = "NotificationChannelAdded"
    AGGREGATE = "channel"
    ID_FIELD = "channel_id"
    channel_id: str
    kind: Literal["webhook", "email", "push"]
    target: dict[str, Any]  # url / to / push subscription, never a secret
    secret_ciphertext: str | None = None
    added_by: str


class NotificationChannelRemoved(Event):
    NAME = "NotificationChannelRemoved"
    AGGREGATE = "channel"
    ID_FIELD = "channel_id"
    channel_id: str
    removed_by: str


class NotificationSent(Event):
    NAME = "NotificationSent"
    AGGREGATE = "notification"
    ID_FIELD = "notification_id"
    notification_id: str
    channel_id: str
    source_event_id: str
    attempt: int


class NotificationFailed(Event):
    NAME = "NotificationFailed"
    AGGREGATE = "notification"
    ID_FIELD = "notification_id"
    notification_id: str
    channel_id: str
    source_event_id: str
    attempts: int
    error: str


# --- audit-svc --------------------------------------------------------------


class ChainHead(Model):
    records: int
    hash: str


class AuditKeyCreated(Event):
    """audit-svc's Ed25519 checkpoint signing key, created once (expected sequence 0 on
    ``_global.auditkey.<key_id>``): the private half only as ciphertext under EPM_MASTER_KEY,
    so a rebuilt projection signs with the same key."""

    NAME = "AuditKeyCreated"
    AGGREGATE = "auditkey"
    ID_FIELD = "key_id"
    key_id: str
    algorithm: Literal["Ed25519"] = "Ed25519"
    public_key: str  # raw 32 bytes, base64
    ciphertext: str  # the raw private key, epm_service.secretbox sealed (context auditkey:<id>)


class AuditCheckpointSigned(Event):
    NAME = "AuditCheckpointSigned"
    AGGREGATE = "audit"
    ID_FIELD = "checkpoint_id"
    checkpoint_id: str
    heads: dict[str, ChainHead]
    key_id: str
    signature: str  # Ed25519, base64, over the canonical JSON of heads


EVENT_CLASSES: tuple[type[Event], ...] = (
    TenantCreated,
    TokenIssued,
    TokenRevoked,
    EnrollmentTokenCreated,
    EnrollmentTokenUsed,
    DeviceEnrolled,
    DeviceRevoked,
    DeviceKeyRotated,
    RequestCreated,
    RequestExpired,
    Approved,
    Denied,
    RuleCreated,
    RuleProposed,
    RuleDisabled,
    GrantConsumed,
    OfflinePolicyChanged,
    TenantKeyCreated,
    OfflineResponseIssued,
    OfflineCodeIssued,
    OfflineLockoutLifted,
    OfflineCodeRedeemed,
    ElevationPerformed,
    AdminSessionStarted,
    AdminSessionEnded,
    SecurityAlertRaised,
    NotificationChannelAdded,
    NotificationChannelRemoved,
    NotificationSent,
    NotificationFailed,
    AuditKeyCreated,
    AuditCheckpointSigned,
)

EVENT_TYPES: dict[str, type[Event]] = {cls.NAME: cls for cls in EVENT_CLASSES}
"""Event name -> model of its current version."""
