"""The dashboard: every host as a tile, the runs that need a person first.

``/`` renders one page of tiles (:data:`.queries.PAGE` per page, people-first then by
name) with the counts per state and the "needs a person" list above them; the filters
(state, verdict, text) re-fetch the tiles only. Live updates come over ``/ui/stream``
(:mod:`.streams`): a tile listens for ``host-<id>`` and re-fetches itself
(``/ui/tiles/<id>``: after a burst of its events; progress comes every 2 s), the counts
and the list for ``summary``.
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get
from litestar.response import Template

from ..api.limits import PathId
from . import queries
from .render import page
from .streams import event_cursor

FILTER_STATES = ("attention", "active", *queries.STATES)


def filters(request: Request) -> dict[str, Any]:
    """The filters of a dashboard request; anything unknown is ignored, not an error."""
    q = request.query_params
    state = q.get("state") if q.get("state") in FILTER_STATES else None
    verdict = q.get("verdict") if q.get("verdict") in queries.VERDICTS else None
    text = (q.get("q") or "").strip()[:100] or None
    try:
        page_no = max(1, min(int(q.get("page") or 1), 1_000_000))
    except ValueError:
        page_no = 1
    return {"state": state, "verdict": verdict, "text": text, "page": page_no}


def with_progress(rt: Any, row: dict[str, Any]) -> dict[str, Any]:
    """A tile row plus the live progress of its run (heartbeats; kept in memory)."""
    p = rt.hub.progress.get(row["run_id"]) if row.get("run_id") is not None else None
    return {**row, "progress": p if p and row.get("state") == "Running" else None}


async def tiles_context(request: Request) -> dict[str, Any]:
    rt = request.app.state.rt
    f = filters(request)
    rows, total = await queries.tiles(rt.db, state=f["state"], verdict=f["verdict"], text=f["text"], page=f["page"])
    pages = max(1, -(-total // queries.PAGE))
    return {"tiles": [with_progress(rt, r) for r in rows], "total": total, "pages": pages, "f": f,
            "filter_states": FILTER_STATES}


async def summary_context(request: Request) -> dict[str, Any]:
    db = request.app.state.rt.db
    return {"counts": await queries.counts(db), "attention": await queries.attention(db)}


class DashboardController(Controller):
    path = ""
    include_in_schema = False

    @get("/")
    async def dashboard(self, request: Request) -> Template:
        events_after = await event_cursor(request.app.state.rt.db)
        return page(request, "dashboard.html.j2", events_after=events_after,
                    **await tiles_context(request), **await summary_context(request))

    @get("/ui/tiles")
    async def tiles(self, request: Request) -> Template:
        return page(request, "_tiles.html.j2", **await tiles_context(request))

    @get("/ui/tiles/{host_id:int}")
    async def tile(self, request: Request, host_id: PathId) -> Template:
        rt = request.app.state.rt
        row = await queries.tile(rt.db, host_id)
        return page(request, "_tile.html.j2", t=with_progress(rt, row) if row else None, host_id=host_id)

    @get("/ui/summary")
    async def summary(self, request: Request) -> Template:
        return page(request, "_summary.html.j2", **await summary_context(request))
