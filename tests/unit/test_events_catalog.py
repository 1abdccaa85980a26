"""The catalog: every event names its aggregate and id field and is immutable."""

from __future__ import annotations

import pydantic
import pytest
from epm_events.catalog import EVENT_CLASSES, EVENT_TYPES, Event, TenantCreated
from epm_events.ids import validate_event_name, validate_token

CONTRACT_NAMES = {
    "TenantCreated",
    "TokenIssued",
    "TokenRevoked",
    "EnrollmentTokenCreated",
    "DeviceEnrolled",
    "DeviceRevoked",
    "RequestCreated",
    "RequestExpired",
    "Approved",
    "Denied",
    "RuleCreated",
    "RuleDisabled",
    "GrantConsumed",
    "OfflinePolicyChanged",
    "TenantKeyCreated",
    "DeviceKeyRotated",
    "OfflineResponseIssued",
    "OfflineCodeIssued",
    "OfflineCodeRedeemed",
    "ElevationPerformed",
    "AdminSessionStarted",
    "AdminSessionEnded",
    "SecurityAlertRaised",
    "NotificationChannelAdded",
    "NotificationChannelRemoved",
    "NotificationSent",
    "NotificationFailed",
    "AuditCheckpointSigned",
}


def test_catalog_holds_every_event_named_in_the_contract() -> None:
    assert set(EVENT_TYPES) >= CONTRACT_NAMES
    assert len(EVENT_TYPES) == len(EVENT_CLASSES)  # no two classes share a name


@pytest.mark.parametrize("cls", EVENT_CLASSES, ids=lambda c: c.__name__)
def test_every_event_names_its_aggregate_and_id_field_and_is_frozen(cls: type[Event]) -> None:
    assert cls.__name__ == cls.NAME
    validate_event_name(cls.NAME)
    validate_token(cls.AGGREGATE, "aggregate")
    assert cls.ID_FIELD in cls.model_fields
    assert cls.VERSION >= 1
    assert cls.type_name() == f"epm.{cls.NAME}.v{cls.VERSION}"
    assert cls.model_config.get("frozen") is True
    assert cls.model_config.get("extra") == "forbid"


def test_events_cannot_be_changed_after_creation() -> None:
    event = TenantCreated(tenant_id="acme", name="Acme", created_by="x")
    with pytest.raises(pydantic.ValidationError):
        event.name = "Other"  # type: ignore[misc]
    assert event.aggregate_id == "acme"
