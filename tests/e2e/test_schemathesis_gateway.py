"""Schemathesis against a real `epm dev` stack: every operation in /openapi.json, called with
generated (valid and invalid) input and an msp_admin token, answers without a 5xx and with a
body that matches the documented schema.

Bounded: a few dozen examples per operation. The stack runs with the rate limits off (they
would only turn generated calls into 429s); the SSE stream (/v1/events) never ends, so it is
left to its own tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

from tests.e2e import devstack
from tests.e2e.devstack import DevProcess

pytestmark = pytest.mark.slow

EXAMPLES = 25
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]
NO_RATE_LIMITS = {"EPM_RATE_PER_PRINCIPAL": "0", "EPM_RATE_PER_ADDRESS": "0"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("schemathesis")
    dev = DevProcess(tmp / "data", "--port", "0", "--nats-port", "0")
    plain_env = devstack.clean_env
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(devstack, "clean_env", lambda: {**plain_env(), **NO_RATE_LIMITS})
        dev.start()
    try:
        endpoints = dev.wait_ready()
        token = Path(tmp / "data" / "admin-token").read_text().strip()
        yield {"url": endpoints["http"], "token": token}
    finally:
        try:
            dev.stop()
        finally:
            dev.kill_everything()


def test_no_operation_answers_a_server_error_or_breaks_its_schema(
    stack: dict[str, Any],
) -> None:
    # One hypothesis run per operation, driven here rather than through schemathesis'
    # pytest plugin (its lazy fixture loader does not work with pytest 9).
    schema = schemathesis.openapi.from_url(stack["url"] + "/openapi.json").exclude(
        path="/v1/events"
    )
    headers = {"Authorization": f"Bearer {stack['token']}"}
    failures: dict[str, str] = {}
    tried = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        calls = 0

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def call(case: schemathesis.Case) -> None:
            nonlocal calls
            calls += 1
            case.call_and_validate(headers=headers, checks=CHECKS, timeout=20)

        try:
            call()
        except (Exception, BaseExceptionGroup) as exc:  # try all, then report every failure
            failures[operation.label] = str(exc)[:2000]
        tried += calls
    assert tried >= EXAMPLES  # it did call the API
    assert not failures, "\n\n".join(f"{op}:\n{why}" for op, why in failures.items())
