"""What a person reads when the API refuses: the RFC 9457 problem's detail, plus what to do."""

from __future__ import annotations

from typing import Any

import orjson

HINTS = {
    401: "pass --token or set EPM_TOKEN (epm dev writes an msp_admin token to <data-dir>/admin-token)",
    403: "this token's role may not do that; use a token with a role that may",
}


def problem_message(status: int, body: bytes, has_token: bool = True) -> str:
    """The problem's ``detail`` (else ``title``, else the HTTP status), with a hint for 401/403."""
    problem: Any = None
    try:
        problem = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        problem = None
    text = ""
    if isinstance(problem, dict):
        for key in ("detail", "title"):
            value = problem.get(key)
            if isinstance(value, str) and value.strip():
                text = value.strip()
                break
    if not text:
        text = f"the server answered HTTP {status}"
    hint = HINTS.get(status)
    if status == 401 and has_token:
        hint = "the token is unknown, revoked or expired; check --token or EPM_TOKEN"
    return f"{text} ({hint})" if hint else text
