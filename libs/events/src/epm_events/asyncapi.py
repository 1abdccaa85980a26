"""The AsyncAPI 3.0 document, generated from the catalog, subjects and streams."""

from __future__ import annotations

from typing import Any

from epm_events.catalog import EVENT_CLASSES
from epm_events.envelope import Envelope
from epm_events.streams import ALL_STREAMS
from epm_events.subjects import EVENTS_PREFIX

CONTRACT_VERSION = "1.0.0"


def asyncapi_document() -> dict[str, Any]:
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    schemas: dict[str, Any] = {
        "CloudEvent": Envelope.model_json_schema(ref_template="#/components/schemas/{model}")
    }
    for cls in EVENT_CLASSES:
        schema = cls.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in schema.pop("$defs", {}).items():
            schemas.setdefault(name, sub)
        schemas[cls.NAME] = schema
        messages[cls.NAME] = {
            "name": cls.NAME,
            "title": cls.type_name(),
            "summary": (cls.__doc__ or cls.NAME).strip().splitlines()[0],
            "contentType": "application/cloudevents+json",
            "headers": {
                "type": "object",
                "properties": {"Nats-Msg-Id": {"type": "string", "description": "= CloudEvent id"}},
            },
            "payload": {
                "allOf": [
                    {"$ref": "#/components/schemas/CloudEvent"},
                    {
                        "type": "object",
                        "properties": {
                            "type": {"const": cls.type_name()},
                            "data": {"$ref": f"#/components/schemas/{cls.NAME}"},
                        },
                    },
                ]
            },
        }
        channel = f"{cls.AGGREGATE}.{cls.NAME}"
        channels[channel] = {
            "address": f"{EVENTS_PREFIX}.{{tenant}}.{cls.AGGREGATE}.{{aggregateId}}.{cls.NAME}",
            "parameters": {
                "tenant": {"description": "tenant id, or _global for MSP-wide aggregates"},
                "aggregateId": {"description": f"the {cls.ID_FIELD} of the event"},
            },
            "messages": {cls.NAME: {"$ref": f"#/components/messages/{cls.NAME}"}},
        }
        operations[f"receive{cls.NAME}"] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{channel}"},
            "summary": f"{cls.NAME} v{cls.VERSION}, stream EPM_EVENTS",
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "EPM domain events",
            "version": CONTRACT_VERSION,
            "description": (
                "CloudEvents 1.0 (structured JSON) on NATS JetStream. Streams: "
                + ", ".join(f"{s.name} ({', '.join(s.subjects)})" for s in ALL_STREAMS)
                + ". Positions are stream sequence numbers; `after=N` means strictly after N."
            ),
        },
        "defaultContentType": "application/cloudevents+json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }
