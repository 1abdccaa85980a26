"""A small client of the gateway: where it is, which token, and errors a person can act on."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import orjson

from epm_cli.dev.datadir import DataDir
from epm_cli.technician.problem import problem_message

FALLBACK_URL = "http://127.0.0.1:8080"
TIMEOUT = 30.0


class ApiError(RuntimeError):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def default_data_dir() -> Path:
    return Path(os.environ.get("EPM_DATA_DIR") or ".epm")


def default_url(data_dir: Path) -> str:
    """The running ``epm dev``'s URL from endpoints.json, else the default one."""
    endpoints = DataDir(data_dir).read_endpoints() or {}
    http = endpoints.get("http")
    return http if isinstance(http, str) and http else FALLBACK_URL


def default_token(data_dir: Path) -> str | None:
    try:
        token = DataDir(data_dir).admin_token_file.read_text().strip()
    except OSError:
        return None
    return token or None


class Api:
    def __init__(self, url: str, token: str | None, timeout: float = TIMEOUT) -> None:
        self.url = url.rstrip("/")
        self.token = token
        headers = {"Accept": "application/json, application/problem+json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._client = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.close()

    def call(self, method: str, path: str, body: object | None = None) -> Any:
        """The decoded JSON answer (``{}`` for an empty one); ApiError otherwise."""
        try:
            response = self._client.request(
                method,
                path,
                content=orjson.dumps(body) if body is not None else None,
                headers={"Content-Type": "application/json"} if body is not None else None,
            )
        except httpx.HTTPError as exc:
            raise ApiError(
                f"cannot reach EPM at {self.url} ({exc.__class__.__name__}: {exc}); "
                "is 'epm dev' running? Otherwise pass --url or set EPM_URL"
            ) from None
        if response.status_code >= 400:
            raise ApiError(
                problem_message(response.status_code, response.content, bool(self.token)),
                response.status_code,
            )
        if not response.content:
            return {}
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise ApiError(
                f"{method} {path} answered {response.status_code} with something that is not "
                f"JSON; is {self.url} an EPM gateway?",
                response.status_code,
            ) from None
