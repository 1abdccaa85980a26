"""The AsyncAPI document is generated from the catalog and covers all of it."""

from __future__ import annotations

import orjson
from epm_events.asyncapi import asyncapi_document
from epm_events.catalog import EVENT_CLASSES


def test_document_is_asyncapi_3() -> None:
    doc = asyncapi_document()
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["title"]
    assert "EPM_EVENTS" in doc["info"]["description"]
    orjson.dumps(doc)  # serialisable as it is served


def test_every_catalog_event_has_a_channel_a_message_and_an_operation() -> None:
    doc = asyncapi_document()
    messages = doc["components"]["messages"]
    schemas = doc["components"]["schemas"]
    addresses = {ch["address"] for ch in doc["channels"].values()}
    for cls in EVENT_CLASSES:
        assert cls.NAME in messages, cls.NAME
        assert messages[cls.NAME]["title"] == cls.type_name()
        assert cls.NAME in schemas
        assert f"epm.evt.{{tenant}}.{cls.AGGREGATE}.{{aggregateId}}.{cls.NAME}" in addresses
        assert f"receive{cls.NAME}" in doc["operations"]


def test_every_reference_in_the_document_resolves() -> None:
    doc = asyncapi_document()

    def refs(node: object) -> list[str]:
        if isinstance(node, dict):
            found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
            return found + [r for v in node.values() for r in refs(v)]
        if isinstance(node, list):
            return [r for v in node for r in refs(v)]
        return []

    for ref in refs(doc):
        assert ref.startswith("#/"), ref
        target: object = doc
        for part in ref[2:].split("/"):
            assert isinstance(target, dict) and part in target, f"dangling {ref}"
            target = target[part]
