"""Server-sent events for the pages: the event stream of the API, named for htmx, and a log tail.

The dashboard and run streams are the API's ``/api/v1/events/stream``
(:func:`vetting_server.api.operator.follow_events`: the events table, woken by the hub,
progress from the heartbeats) with event names the pages' ``hx-trigger="sse:…"`` can
listen for: ``host-<id>`` (an event of the host), ``progress-<host id>`` and ``summary``
on the dashboard, ``run`` and ``progress`` on a run page. Every trigger of a fragment is a
``delay`` (a burst of events makes one request once it is over, so the last state is
always fetched; a newer request replaces one in flight): htmx keeps one throttle/delay
state per element, so a ``throttle`` for progress beside it would swallow the state
events that follow within its window. Progress is thinned here instead (a run's at most
once a second on its page, every 2 s on the dashboard). Each event carries its events-table id, so a browser that reconnects (the
``EventSource`` does by itself) sends ``Last-Event-ID`` and misses nothing; a stream the
page has to open anew resumes from ``?after=<id>``, which the page keeps up to date.

The log tail streams the run's ``log_lines`` as rendered HTML (:mod:`.ansi`), one SSE
message per batch, with the id of its last line: a reconnect resumes after it, so no
line is shown twice or lost. Without ``Last-Event-ID`` it starts :data:`TAIL_LINES`
from the end. Log batches may be written by another process (the SQLite writer), so
the tail looks every :data:`LOG_POLL_S` seconds as well as when the hub wakes it. Once
the run is over and every line is sent it says ``end`` and the page closes the stream.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from html import escape
from typing import Any

from litestar import Controller, Request, get
from litestar.response import ServerSentEvent, ServerSentEventMessage

from vetting_core.statemachine import ENDED

from ..api.limits import PathId
from ..api.operator import follow_events
from ..db.database import as_dt
from ..errors import ApiError
from .ansi import ansi_html

TAIL_LINES = 300
LOG_POLL_S = 0.5
KEEPALIVE_S = 15.0
HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


def last_event_id(request: Request) -> int | None:
    """Where to resume: the ``Last-Event-ID`` header (an ``EventSource`` reconnecting by
    itself), else ``?after=`` (one created anew by the page, which keeps the last id in the
    stream's URL: ``static/app.js``)."""
    value = request.headers.get("last-event-id") or request.query_params.get("after")
    if not value:
        return None
    try:
        return max(0, int(value))
    except ValueError:
        raise ApiError(400, f"Last-Event-ID must be a number, got {value[:40]!r}") from None


async def event_cursor(db: Any) -> int:
    """The newest event's id. A page reads it *before* what it renders and opens its
    stream with ``?after=`` it, so an event written between the render and the stream's
    opening (a run that starts as its page loads) still reaches the page."""
    return int(await db.fetchval("SELECT coalesce(max(id), 0) FROM events") or 0)


def render_lines(rows: list[dict[str, Any]]) -> str:
    return "".join(
        f'<span class="ln lvl-{escape(r["level"] or "info")}"><time>{as_dt(r["ts"]).strftime("%H:%M:%S")}</time> '
        f'<b>{escape(r["stage"] or "-")}</b> {ansi_html(r["message"])}</span>'
        for r in rows
    )


async def _events(request: Request, run_id: int | None, on_row: Any, on_progress: Any, progress_every_s: float) -> ServerSentEvent:
    """The event stream (of one run, or all) as the messages ``on_row``/``on_progress``
    name; a run's progress at most every ``progress_every_s`` seconds (the page refreshes
    a fragment per message, and a heartbeat may carry new progress twice a second)."""
    rt = request.app.state.rt
    start = last_event_id(request)
    start = await event_cursor(rt.db) if start is None else start
    sent: dict[int, float] = {}

    async def gen() -> AsyncIterator[ServerSentEventMessage]:
        # the id sets the EventSource's Last-Event-ID before any event arrives: a reconnect
        # (say, while the server restarts) resumes here even if only progress came since
        yield ServerSentEventMessage(comment="vetting events", retry=2000, id=start)
        async for row, progress in follow_events(rt, start, run_id, KEEPALIVE_S):
            if row is not None:
                messages = on_row(row)
            elif progress is not None:
                now = time.monotonic()
                if now - sent.get(progress["run_id"], -math.inf) < progress_every_s:
                    continue
                sent[progress["run_id"]] = now
                messages = on_progress(progress)
            else:
                messages = [ServerSentEventMessage(comment="keep-alive")]
            for m in messages:
                yield m

    return ServerSentEvent(gen(), headers=HEADERS)


class StreamController(Controller):
    path = "/ui"
    include_in_schema = False

    @get("/stream")
    async def dashboard(self, request: Request) -> ServerSentEvent:
        rt = request.app.state.rt

        def on_row(row: dict[str, Any]) -> list[ServerSentEventMessage]:
            out = [ServerSentEventMessage(event=f"host-{row['host_id']}", data="", id=row["id"])] if row["host_id"] else []
            if row["kind"] != "notification":
                out.append(ServerSentEventMessage(event="summary", data="", id=row["id"]))
            return out

        def on_progress(p: dict[str, Any]) -> list[ServerSentEventMessage]:
            auth = rt.runs.get(p["run_id"])
            return [ServerSentEventMessage(event=f"progress-{auth.host_id}", data="")] if auth else []

        return await _events(request, None, on_row, on_progress, 2.0)

    @get("/runs/{run_id:int}/stream")
    async def run(self, request: Request, run_id: PathId) -> ServerSentEvent:
        return await _events(request, run_id, lambda row: [ServerSentEventMessage(event="run", data=row["kind"], id=row["id"])],
                             lambda p: [ServerSentEventMessage(event="progress", data="")], 1.0)

    @get("/runs/{run_id:int}/log")
    async def log(self, request: Request, run_id: PathId) -> ServerSentEvent:
        rt = request.app.state.rt
        db = rt.db
        after = last_event_id(request)
        if after is None:  # the last TAIL_LINES lines first
            after = int(await db.fetchval(
                "SELECT coalesce(min(id) - 1, 0) FROM (SELECT id FROM log_lines WHERE run_id = $1 ORDER BY id DESC LIMIT $2) t",
                run_id, TAIL_LINES,
            ) or 0)

        async def gen() -> AsyncIterator[ServerSentEventMessage]:
            last, idle = after, 0.0
            yield ServerSentEventMessage(comment=f"log of run {run_id}", retry=1000)
            while True:
                rows = await db.fetch(
                    "SELECT id, ts, stage, level, message FROM log_lines WHERE run_id = $1 AND id > $2 ORDER BY id LIMIT 500",
                    run_id, last,
                )
                if rows:
                    last, idle = int(rows[-1]["id"]), 0.0
                    yield ServerSentEventMessage(event="line", data=render_lines(rows), id=last)
                    continue
                state = await db.fetchval("SELECT state FROM runs WHERE id = $1", run_id)
                if state is None or state in ENDED:
                    yield ServerSentEventMessage(event="end", data="", id=last)
                    return
                await rt.hub.wait(LOG_POLL_S)
                idle += LOG_POLL_S
                if idle >= KEEPALIVE_S:
                    idle = 0.0
                    yield ServerSentEventMessage(comment="keep-alive")

        return ServerSentEvent(gen(), headers=HEADERS)
