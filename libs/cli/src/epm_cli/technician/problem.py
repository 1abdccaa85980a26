"""What a person reads when the API refuses: the RFC 9457 problem's detail, plus what to do."""

from __future__ import annotations

from typing import Any

import orjson

NO_TOKEN_HINT = (
    "no token was given: pass --token or set EPM_TOKEN "
    "(epm dev writes an msp_admin token to <data-dir>/admin-token)"
)


def problem_message(status: int, body: bytes, has_token: bool = True) -> str:
    """The problem's ``detail`` (else ``title``, else the HTTP status); a hint if no token."""
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
    if status == 401 and not has_token:
        return f"{text} ({NO_TOKEN_HINT})"
    return text
