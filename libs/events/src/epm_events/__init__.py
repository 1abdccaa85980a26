"""epm_events: the one event contract every EPM service, agent and integrator shares.

Where a fact lives:
- ``ids``: tenant/device/aggregate id rules and event-id derivation.
- ``subjects``: every NATS subject EPM uses, built and parsed in one place.
- ``catalog``: one frozen pydantic model per domain event.
- ``envelope``: the CloudEvents 1.0 envelope.
- ``codec``: bytes <-> envelope/event, with upcasting and clear rejection reasons.
- ``upcasters``: older schema versions lifted to the current one.
- ``streams``: the JetStream stream definitions.
- ``asyncapi``: the AsyncAPI 3 document, generated from the above.
"""

from epm_events.catalog import EVENT_TYPES, Event, event_type_name
from epm_events.codec import DecodeError, decode, decode_event, encode
from epm_events.envelope import Envelope, new_envelope
from epm_events.ids import InvalidId, derived_event_id, new_event_id

__all__ = [
    "EVENT_TYPES",
    "DecodeError",
    "Envelope",
    "Event",
    "InvalidId",
    "decode",
    "decode_event",
    "derived_event_id",
    "encode",
    "event_type_name",
    "new_envelope",
    "new_event_id",
]
