"""uvicorn's httptools protocol, answering the hot agent routes itself (``vetting serve``).

Under plain ASGI each request costs uvicorn a scope, a request/response cycle, a task,
the proxy-headers middleware and two socket writes (status line and headers, then the
body: two TCP segments on the wire). At 1,000 heartbeats per second that was ~360 µs
of the server's CPU per heartbeat on this 2-core machine (``bench/ingest.py``,
"heartbeats alone"). :class:`EdgeProtocol` takes a ``POST`` to a hot route
(:mod:`.edge.routes`) from the parser's callbacks, buffers its body (past the agent body
limit the 413 goes out at once and the rest is dropped as it arrives) and answers with
one write: a heartbeat of a cached run right away, in the
parser callback (:func:`.routes.reply_now`); anything that must await (a sensor batch
waits for its commit; a run not cached yet) in a task of its own, which uvicorn's
shutdown waits for like its own.

It also times requests out, which uvicorn does not (its keep-alive timer only covers
the idle time between requests): a request's line and headers must arrive within
``server.header_timeout_s`` of its first byte (or of the connection opening), and its
body within ``server.body_timeout_s`` of the headers; past that the client gets 408 and
the connection is closed. A slow client (slowloris) thus holds a connection for seconds,
not forever; the event loop never waits for one either way
(``tests/server/test_serving.py``: 50 such clients, heartbeats unaffected).

Everything else (other paths and methods, HTTP/1.0, ``Connection: close``,
``Expect: 100-continue``, upgrades, a request pipelined behind one in flight) goes the
ordinary way, where :class:`.app.VettingApp` still answers the hot routes before its
router. The replies are the same either way (``tests/server/test_edge_http.py``).
"""

from __future__ import annotations

import asyncio
import http
from typing import Any

import msgspec

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


from . import routes as edge
from ..app import VettingApp
from ..errors import error_body

_encode = msgspec.json.Encoder().encode


def _status_line(code: int) -> bytes:
    try:
        phrase = http.HTTPStatus(code).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {code} {phrase}\r\n".encode()


_STATUS = {code: _status_line(code) for code in range(100, 600)}


class _NoEvent:
    """uvicorn's protocol sets its cycle's message event when the connection drops."""

    @staticmethod
    def set() -> None:
        pass


class _EdgeRequest:
    """A hot-route request in flight. It stands in for uvicorn's request/response cycle,
    whose flags the protocol reads and sets meanwhile (a pipelined request waits behind
    it; a dropped connection marks it disconnected; shutdown clears ``keep_alive``)."""

    __slots__ = ("run_id", "route", "path", "token", "body", "dispatched", "response_complete", "disconnected", "keep_alive")
    message_event = _NoEvent

    def __init__(self, run_id: int, route: edge.EdgeRoute, path: str, token: str | None) -> None:
        self.run_id, self.route, self.path, self.token = run_id, route, path, token
        self.body: bytearray | None = bytearray()  # None: over the limit (the rest is dropped)
        self.dispatched = self.response_complete = self.disconnected = False
        self.keep_alive = True


class EdgeProtocol(HttpToolsProtocol):
    """Pass as ``uvicorn.Config(http=EdgeProtocol)`` with a :class:`.app.VettingApp`."""

    def __init__(self, config: Any, *args: Any, **kw: Any) -> None:
        super().__init__(config, *args, **kw)
        app = config.app
        self._app = app if isinstance(app, VettingApp) else None
        server = self._app.rt.settings.server if self._app is not None else None
        self._timeouts = (server.header_timeout_s, server.body_timeout_s) if server is not None else (10.0, 60.0)
        self._timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------ timeouts
    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._timed_out, what, seconds)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self, what: str, seconds: float) -> None:
        self._timer = None
        transport = self.transport
        if transport.is_closing():
            return
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not getattr(cycle, "response_started", False):
            payload = _encode(error_body(408, f"request {what} not received within {seconds:g} s"))
            transport.write(
                b"%scontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
                % (_STATUS[408], len(payload), payload)
            )
        transport.close()

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self._timeouts[0], "headers")  # a connection that sends nothing is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._timer is None and (self.cycle is None or self.cycle.response_complete):
            self._arm(self._timeouts[0], "headers")  # the first bytes of the next request
        super().data_received(data)

    # ------------------------------------------------------------ parser callbacks
    def on_headers_complete(self) -> None:
        self._arm(self._timeouts[1], "body")
        req = self._edge_request()
        if req is None:
            super().on_headers_complete()
            return
        self.cycle = req  # type: ignore[assignment]
        if req.body is None:  # declared over the limit: answered now (after the token check)
            self._dispatch(req)

    def on_body(self, body: bytes) -> None:
        req = self.cycle
        if type(req) is not _EdgeRequest:
            super().on_body(body)
        elif req.body is not None:
            req.body += body
            if len(req.body) > self._max_body():
                req.body = None  # answered now; the rest of the body is dropped as it arrives
                self._dispatch(req)

    def on_message_complete(self) -> None:
        self._disarm()
        req = self.cycle
        if type(req) is not _EdgeRequest:
            super().on_message_complete()
        elif not req.dispatched:
            self._dispatch(req)

    # ------------------------------------------------------------------ the edge
    def _max_body(self) -> int:
        return self._app.rt.settings.server.max_agent_body_bytes  # type: ignore[union-attr]

    def _edge_request(self) -> _EdgeRequest | None:
        cycle, parser = self.cycle, self.parser
        if (
            self._app is None
            or (cycle is not None and not cycle.response_complete)  # pipelined behind one in flight
            or self.expect_100_continue
            or parser.get_method() != b"POST"
            or parser.get_http_version() != "1.1"
            or not parser.should_keep_alive()
            or parser.should_upgrade()
        ):
            return None
        path = self.url.decode("latin-1")
        hit = self._app.edge_route(path)
        if hit is None:
            return None
        token, length = edge.request_headers(self.headers)
        req = _EdgeRequest(hit[0], hit[1], path, token)
        if edge.declared_too_large(length, self._max_body()):
            req.body = None
        return req

    def _dispatch(self, req: _EdgeRequest) -> None:
        req.dispatched = True
        rt, max_body = self._app.rt, self._max_body()  # type: ignore[union-attr]
        now = edge.reply_now(rt, req.path, req.run_id, req.route, req.token, req.body, max_body)
        if now is not None:
            self._send(req, now)
            return
        task = self.loop.create_task(self._answer(req, rt, max_body))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    async def _answer(self, req: _EdgeRequest, rt: Any, max_body: int) -> None:
        async def read_body() -> bytearray | None:
            return req.body

        self._send(req, await edge.reply(rt, req.path, req.run_id, req.route, req.token, read_body, max_body))

    def _send(self, req: _EdgeRequest, reply: edge.Reply) -> None:
        req.response_complete = True
        transport = self.transport
        if not req.disconnected and not transport.is_closing():
            status, payload, headers = reply
            out = [_STATUS[status]]
            for k, v in (*self.server_state.default_headers, *headers):
                out += (k, b": ", v, b"\r\n")
            out.append(b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(payload))
            out.append(payload)
            transport.write(b"".join(out))
            if not req.keep_alive:
                transport.close()
        self.on_response_complete()
