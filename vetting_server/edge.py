"""The hot agent routes, answered before Litestar's router.

Every agent heartbeats every few seconds and streams sensor and log batches for the
whole run: at 10,000 agents these requests are nearly all the server's traffic, and
Litestar's per-request machinery (router, middleware stack, request object, guards
that copy their handler, kwargs model, response object) cost more than the work.
:class:`.app.VettingApp` hands them to :func:`answer` as a bare ASGI exchange.
Measured with ``bench/ingest.py`` (docs/api.md, "Measured").

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

from vetting_core.protocol import ErrorBody

from .auth import authenticate_run, parse_bearer
from .errors import ApiError
from .runtime import RunAuth, Runtime

log = structlog.get_logger()

PATH = re.compile(r"/api/v1/runs/(\d{1,18})/([a-z]+)")
_JSON = (b"content-type", b"application/json")
_encode = msgspec.json.Encoder().encode


class EdgeRoute(NamedTuple):
    decoder: msgspec.json.Decoder  # of the request body's Struct
    handle: Callable[[Runtime, int, RunAuth, Any], Awaitable[Any]]  # (rt, run_id, auth, body) -> reply Struct
    allow_finished: bool = False  # a finished run's token is accepted (heartbeat: the grace period)


async def answer(rt: Runtime, scope: Any, receive: Any, send: Any, run_id: int, route: EdgeRoute, max_body: int) -> None:
    """Read, authenticate, decode and answer one request to ``route`` of run ``run_id``."""
    headers: list[tuple[bytes, bytes]] = []
    try:
        token = length = None
        for k, v in scope["headers"]:
            if k == b"authorization":
                token = parse_bearer(v.decode("latin-1"))
            elif k == b"content-length":
                length = v
        auth = await authenticate_run(rt, token, run_id, allow_finished=route.allow_finished)
        if length is not None and length.isdigit() and int(length) > max_body:
            raise ApiError(413, f"request body too large (limit {max_body} bytes)")
        body = bytearray()
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body += msg.get("body", b"")
            if len(body) > max_body:
                raise ApiError(413, f"request body too large (limit {max_body} bytes)")
            if not msg.get("more_body"):
                break
        try:
            data = route.decoder.decode(body or b"{}")
        except msgspec.ValidationError as exc:
            raise ApiError(400, f"Validation failed for POST {scope['path']}: {exc}") from None
        except msgspec.DecodeError as exc:
            raise ApiError(400, f"malformed JSON body: {exc}") from None
        status, payload = 200, _encode(await route.handle(rt, run_id, auth, data))
    except ApiError as exc:
        status = exc.status_code
        payload = _encode(ErrorBody(status_code=status, detail=exc.detail, extra=exc.extra))
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items()]
    except Exception as exc:
        log.exception("request.failed", path=scope["path"], error=f"{type(exc).__name__}: {exc}")
        status = 500
        payload = _encode(ErrorBody(status_code=500, detail=f"internal error: {type(exc).__name__}; see the server log"))
    await send({
        "type": "http.response.start", "status": status,
        "headers": [_JSON, (b"content-length", str(len(payload)).encode()), *headers],
    })
    await send({"type": "http.response.body", "body": payload})
