"""Errors a command can answer with; they travel over RPC and become RFC 9457 problems."""

from __future__ import annotations

from typing import Any


class CommandError(Exception):
    status = 400
    title = "Bad request"

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        title: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if status is not None:
            self.status = status
        if title is not None:
            self.title = title
        self.extra = extra or {}

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "title": self.title, "detail": self.detail, **self.extra}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CommandError:
        extra = {k: v for k, v in d.items() if k not in ("status", "title", "detail")}
        status = int(d.get("status", 500))
        # raised again as the class it was raised as, so a caller can catch Conflict or NotFound
        kind = next((k for k in _KINDS if k.status == status), cls) if cls is CommandError else cls
        return kind(
            str(d.get("detail", "")),
            status=status,
            title=str(d.get("title", "Error")),
            extra=extra,
        )


class Invalid(CommandError):
    status = 422
    title = "Invalid input"


class NotFound(CommandError):
    status = 404
    title = "Not found"


class Forbidden(CommandError):
    status = 403
    title = "Forbidden"


class Conflict(CommandError):
    status = 409
    title = "Conflict"


class Unavailable(CommandError):
    status = 503
    title = "Service unavailable"


_KINDS: tuple[type[CommandError], ...] = (Invalid, NotFound, Forbidden, Conflict, Unavailable)
