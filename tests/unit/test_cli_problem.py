"""What a technician reads when the API refuses (RFC 9457 problem+json)."""

from __future__ import annotations

import orjson
from epm_cli.technician.options import render_table
from epm_cli.technician.problem import problem_message


def problem(**fields: object) -> bytes:
    return orjson.dumps({"type": "about:blank", "status": 400, **fields})


def test_the_detail_is_what_the_user_reads() -> None:
    body = problem(title="Bad Request", detail="invalid tenant id 'BAD': use lowercase letters")
    assert problem_message(422, body) == "invalid tenant id 'BAD': use lowercase letters"


def test_the_title_stands_in_for_a_missing_detail() -> None:
    assert problem_message(404, problem(title="Not Found")) == "Not Found"


def test_a_body_that_is_not_a_problem_still_gives_the_status() -> None:
    assert problem_message(502, b"<html>Bad gateway</html>") == "the server answered HTTP 502"
    assert problem_message(500, b"") == "the server answered HTTP 500"


def test_without_a_token_a_401_says_how_to_pass_one() -> None:
    message = problem_message(401, problem(detail="missing bearer token"), has_token=False)
    assert message.startswith("missing bearer token")
    assert "--token" in message and "EPM_TOKEN" in message and "admin-token" in message


def test_with_a_token_a_401_shows_the_server_detail_only() -> None:
    assert problem_message(401, problem(detail="unknown token")) == "unknown token"


def test_tables_align_columns_and_say_when_empty() -> None:
    rows = [{"id": "acme", "name": "Acme Corp"}, {"id": "globex-eu", "name": "Globex"}]
    assert render_table(rows, ["id", "name"], "none").splitlines() == [
        "ID         NAME",
        "acme       Acme Corp",
        "globex-eu  Globex",
    ]
    assert render_table([], ["id"], "no tenants yet") == "no tenants yet"
