"""Errors the services raise, and their JSON form (:class:`vetting_core.protocol.ErrorBody`).

Services raise :class:`ApiError` (no Litestar import needed); the app's exception
handlers turn it, Litestar's own HTTP errors and anything unexpected into an
``ErrorBody`` with a message a person can act on.
"""

from __future__ import annotations

from typing import Any

from vetting_core.protocol import ErrorBody
from vetting_core.text import printable


def error_body(status: int, detail: str, extra: dict[str, Any] | list[Any] | None = None) -> ErrorBody:
    """The one shape of every error answer, whether Litestar routed the request or the
    edge answered it first (:mod:`.edge.routes`): a detail may quote the client's text, so
    control characters (U+0000 too) are shown escaped."""
    return ErrorBody(status_code=status, detail=printable(detail), extra=extra)


def internal_error_body(exc: BaseException) -> ErrorBody:
    """A bug's answer: its type, never its message (which may hold internals)."""
    return error_body(500, f"internal error: {type(exc).__name__}; see the server log")


class ApiError(Exception):
    def __init__(
        self, status_code: int, detail: str, extra: dict[str, Any] | list[Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
        self.extra = extra
        self.headers = headers or {}


def bad_request(detail: str, **extra: Any) -> ApiError:
    return ApiError(400, detail, extra or None)


def unauthorized(detail: str) -> ApiError:
    return ApiError(401, detail, headers={"WWW-Authenticate": "Bearer"})


def forbidden(detail: str) -> ApiError:
    return ApiError(403, detail)


def not_found(detail: str) -> ApiError:
    return ApiError(404, detail)


def conflict(detail: str, **extra: Any) -> ApiError:
    return ApiError(409, detail, extra or None)


def unprocessable(field: str, message: str) -> ApiError:
    return ApiError(422, f"{field}: {message}", {"field": field})


def unavailable(detail: str, retry_after_s: int = 5) -> ApiError:
    """503: try again later (the agent retries with backoff)."""
    return ApiError(503, detail, headers={"Retry-After": str(retry_after_s)})
