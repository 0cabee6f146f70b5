"""The hot agent routes, answered before Litestar's router.

Every agent heartbeats every few seconds and streams sensor and log batches for the
whole run: at 10,000 agents these requests are nearly all the server's traffic, and
Litestar's per-request machinery (router, middleware stack, request object, guards
that copy their handler, kwargs model, response object) cost more than the work.
:class:`.app.VettingApp` hands them to :func:`answer` as a bare ASGI exchange, and
under ``vetting serve`` :class:`.http.EdgeProtocol` answers them before ASGI
(:func:`reply`, or :func:`reply_now` when nothing needs awaiting). Measured with
``bench/ingest.py`` (docs/api.md, "Measured").

The semantics are the routed handlers' (which stay, for the OpenAPI document and the
path's other spellings): the run token first (401/403), then the body limit (413), a
malformed body (400), the same replies and the same :class:`ErrorBody` errors.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import msgspec
import structlog


from ..api import limits
from ..api.auth import authenticate_run, cached_run_auth, parse_bearer
from ..errors import ApiError, error_body, internal_error_body
from ..runtime import RunAuth, Runtime

log = structlog.get_logger()

PATH = re.compile(r"/api/v1/runs/(\d{1,18})/([a-z]+)")
_JSON = (b"content-type", b"application/json")
_encode = msgspec.json.Encoder().encode


class EdgeRoute(NamedTuple):
    decoder: msgspec.json.Decoder  # of the request body's Struct
    handle: Callable[[Runtime, int, RunAuth, Any], Any]  # (rt, run_id, auth, body) -> reply Struct (awaitable unless sync)
    allow_finished: bool = False  # a finished run's token is accepted (heartbeat: the grace period)
    sync: bool = False  # handle returns the reply itself: answered without a task when the run is cached


class Reply(NamedTuple):
    status: int
    payload: bytes  # JSON
    headers: list[tuple[bytes, bytes]]  # beyond content-type and content-length


class _Gone(Exception):
    """The client went away before its body arrived: nothing to answer."""


def request_headers(headers: Any) -> tuple[str | None, bytes | None]:
    """The bearer token and the content-length of a request's raw (lowercased) headers."""
    token = length = None
    for k, v in headers:
        if k == b"authorization":
            token = parse_bearer(v.decode("latin-1"))
        elif k == b"content-length":
            length = v
    return token, length


def declared_too_large(length: bytes | None, max_body: int) -> bool:
    """A request's content-length header says its body is over the limit."""
    return length is not None and length.isdigit() and int(length) > max_body


def _too_large(max_body: int) -> ApiError:
    return ApiError(413, f"request body too large (limit {max_body} bytes)")


def _decode(route: EdgeRoute, path: str, body: bytes | bytearray | None, max_body: int) -> Any:
    if body is None:
        raise _too_large(max_body)
    return limits.decode(route.decoder, body, f"POST {path}")


def _error(path: str, exc: Exception) -> Reply:
    if isinstance(exc, ApiError):
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items()]
        return Reply(exc.status_code, _encode(error_body(exc.status_code, exc.detail, exc.extra)), headers)
    log.exception("request.failed", path=path, error=f"{type(exc).__name__}: {exc}")
    return Reply(500, _encode(internal_error_body(exc)), [])


def reply_now(rt: Runtime, path: str, run_id: int, route: EdgeRoute, token: str | None,
              body: bytes | bytearray | None, max_body: int) -> Reply | None:
    """The reply, when it needs no awaiting (a sync route of a cached run with the right
    token, or a missing token); None: ask :func:`reply`. ``body`` None: over the limit."""
    if not route.sync:
        return None
    try:
        auth = cached_run_auth(rt, token, run_id, allow_finished=route.allow_finished)
        if auth is None:
            return None
        return Reply(200, _encode(route.handle(rt, run_id, auth, _decode(route, path, body, max_body))), [])
    except Exception as exc:
        return _error(path, exc)


async def reply(rt: Runtime, path: str, run_id: int, route: EdgeRoute, token: str | None,
                read_body: Callable[[], Awaitable[bytes | bytearray | None]], max_body: int) -> Reply:
    """Authenticate, then read (``read_body``: None when over the limit), decode and
    answer one request to ``route`` of run ``run_id``."""
    try:
        auth = await authenticate_run(rt, token, run_id, allow_finished=route.allow_finished)
        result = route.handle(rt, run_id, auth, _decode(route, path, await read_body(), max_body))
        return Reply(200, _encode(result if route.sync else await result), [])
    except _Gone:
        raise
    except Exception as exc:
        return _error(path, exc)


async def answer(rt: Runtime, scope: Any, receive: Any, send: Any, run_id: int, route: EdgeRoute, max_body: int) -> None:
    """:func:`reply` as a bare ASGI exchange."""

    async def read_body() -> bytearray | None:
        if declared_too_large(length, max_body):
            return None  # not read: the 413 goes out now
        body = bytearray()
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                raise _Gone
            body += msg.get("body", b"")
            if len(body) > max_body:
                return None
            if not msg.get("more_body"):
                return body

    token, length = request_headers(scope["headers"])
    try:
        status, payload, headers = await reply(rt, scope["path"], run_id, route, token, read_body, max_body)
    except _Gone:
        return
    await send({
        "type": "http.response.start", "status": status,
        "headers": [_JSON, (b"content-length", str(len(payload)).encode()), *headers],
    })
    await send({"type": "http.response.body", "body": payload})
