"""The technician web console: static HTML, CSS and JavaScript served by the gateway.

No build step and nothing from the internet: the files in ``static/`` are the
app (plain ES modules over the same /v1 API as the CLI, signed in with a
session cookie). Only the files listed here are served.
"""

from __future__ import annotations

from importlib.resources import files

from epm_service.errors import NotFound
from fastapi import APIRouter
from fastapi.responses import Response

router = APIRouter(include_in_schema=False)

STATIC = files(__package__) / "static"

MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".webmanifest": "application/manifest+json",
}

# Everything the page needs comes from this origin; nothing inline, nothing framed.
POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; worker-src 'self'; manifest-src 'self'; object-src 'none';"
    " base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _serve(name: str, extra: dict[str, str] | None = None) -> Response:
    suffix = "." + name.rsplit(".", 1)[-1]
    path = STATIC / name
    if suffix not in MEDIA_TYPES or "/" in name or name.startswith(".") or not path.is_file():
        raise NotFound(f"the console has no file {name!r}")
    headers = {**HEADERS, **(extra or {})}
    return Response(path.read_bytes(), media_type=MEDIA_TYPES[suffix], headers=headers)


@router.get("/")
async def console_page() -> Response:
    return _serve("index.html", {"Content-Security-Policy": POLICY, "X-Frame-Options": "DENY"})


@router.get("/sw.js")
async def service_worker() -> Response:
    """At the root so it may control the whole console (web push notifications)."""
    return _serve("sw.js", {"Service-Worker-Allowed": "/"})


@router.get("/console/{name}")
async def console_file(name: str) -> Response:
    return _serve(name)
