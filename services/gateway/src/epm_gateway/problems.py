"""RFC 9457 problem+json for every error the gateway answers, framework errors included."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from epm_events.ids import InvalidId
from epm_service.errors import CommandError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.responses import Response

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class Unauthorized(CommandError):
    status = 401
    title = "Unauthorized"

    def __init__(self, detail: str, *, invalid_token: bool = False) -> None:
        super().__init__(detail)
        self.invalid_token = invalid_token

    @property
    def challenge(self) -> str:
        if self.invalid_token:
            return 'Bearer realm="epm", error="invalid_token"'
        return 'Bearer realm="epm"'


def problem(
    request: Request,
    status: int,
    title: str,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = {
        "type": f"urn:epm:problem:{re.sub(r'[^a-z0-9]+', '-', title.lower()).strip('-')}",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        **extra,
    }
    return JSONResponse(
        body, status_code=status, media_type=PROBLEM_JSON, headers=dict(headers or {})
    )


async def on_command_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CommandError)
    headers = {"WWW-Authenticate": exc.challenge} if isinstance(exc, Unauthorized) else None
    return problem(request, exc.status, exc.title, exc.detail, headers=headers, **exc.extra)


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    title = HTTPStatus(status).phrase
    detail = str(exc.detail)
    if status == 404 and detail == title:
        detail = f"there is no {request.url.path}; /openapi.json lists every endpoint"
    elif status == 405:
        detail = f"{request.method} is not supported on {request.url.path}; see /openapi.json"
    if status >= 500:
        return problem(request, status, title, detail)
    return problem(request, status, title, detail, headers=exc.headers)


async def on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"field": ".".join(str(p) for p in e["loc"]), "message": _message(e)} for e in exc.errors()
    ]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors) or "invalid request"
    return problem(request, 422, "Invalid input", detail, errors=errors)


async def on_invalid_id(request: Request, exc: Exception) -> Response:
    return problem(request, 422, "Invalid input", str(exc))


def _message(error: Any) -> str:
    if error.get("type") == "extra_forbidden":
        return "not a field of this body: check its spelling, or leave it out"
    msg = str(error.get("msg", "invalid"))
    return msg.removeprefix("Value error, ")


async def on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error", extra={"path": request.url.path})
    return problem(
        request,
        500,
        "Internal error",
        "the gateway failed unexpectedly; its log has the details. Try again, and report it"
        " if it persists",
    )


PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "RFC 9457 problem details; 'detail' says what to do",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}


def document(app: FastAPI) -> None:
    """Say in /openapi.json what the handlers above answer: problem+json for every error
    (FastAPI would document its own JSON shape for 422, which this API never sends)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = generate()
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        schemas["Problem"] = PROBLEM_SCHEMA
        problem_content = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
        for path_item in schema.get("paths", {}).values():
            for operation in path_item.values():
                responses = operation.setdefault("responses", {})
                if "422" in responses:
                    responses["422"] = {"description": "Invalid input", "content": problem_content}
                responses.setdefault(
                    "default",
                    {"description": "An error, as problem+json", "content": problem_content},
                )
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install(app: FastAPI) -> None:
    document(app)
    app.add_exception_handler(CommandError, on_command_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(InvalidId, on_invalid_id)
    app.add_exception_handler(Exception, on_unexpected)
