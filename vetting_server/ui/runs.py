"""The run page: timeline, live log and charts, breaches, spec diffs, the hold and the
decisions only a person makes.

Live parts are fragments the page re-fetches when its event stream (:mod:`.streams`)
says the run changed: the timeline (stages, verdicts, durations, progress) and the panel
(state, hold box, actions, spec diffs, breaches); the charts re-fetch every few seconds
while the run is live. Actions go through the API's handlers (:mod:`.api`) with the same
state checks and audit; two of them ask more of the operator than a click:

- **Override the wipe probe**: the page lists what the probe found on each disk and the
  operator types the disk names; the names must be exactly the disks with findings (any
  order), or nothing is overridden. The confirmed names go into the audit event.
- **Ignore a spec difference for this host**: stored in ``spec_ignores`` and carried by
  every later run's spec (:class:`vetting_core.specdiff.SpecIgnore`), so the next
  SpecValidate keeps the diff but marks it ignored and does not fail on it; audited, and
  undone from the host page.
"""

from __future__ import annotations

import re
from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.params import FromPath
from litestar.response import Redirect, Template

from vetting_core.statemachine import ACTIVE, ENDED, FAILED

from ..api.limits import PathId
from ..errors import ApiError, conflict, not_found
from ..runs import listing
from ..runs.service import jload
from . import api
from .charts import live_charts
from .render import page
from .streams import event_cursor

MAX_TOKENS = 1000


def tokens(request: Request) -> dict[tuple[int, int], dict[str, str]]:
    """Run tokens to show once, on the first view of a run the session started (the API
    shows them once in its reply). In this process only: a replica behind a load balancer
    that did not start the run shows the page without it."""
    return request.app.state.ui_run_tokens


def remember_token(request: Request, run_id: int, created: Any) -> None:
    store = tokens(request)
    if len(store) >= MAX_TOKENS:
        store.pop(next(iter(store)))
    store[(request.state.ui_session.id, run_id)] = {"token": created.agent_token, "kernel_params": created.kernel_params}




def wipe_findings(stages: list[dict[str, Any]], run: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """What the wipe probe found on each disk, when the held stage stopped on it."""
    if run["state"] != "FailedHolding":
        return {}
    stage = next((s for s in stages if s["name"] == run["failed_stage"]), None)
    found = (jload(stage["summary_json"], {}) or {}).get("wipe_probe") if stage else None
    return found if isinstance(found, dict) else {}


def typed_disks(text: str) -> list[str]:
    return sorted({t for t in re.split(r"[\s,]+", text) if t})


async def run_context(request: Request, run_id: int) -> dict[str, Any]:
    rt = request.app.state.rt
    db = rt.db
    run = await listing.run_row(db, run_id)
    if run is None:
        raise not_found(f"run {run_id} not found")
    stages = await listing.stages(db, run_id)
    subs = await db.fetch("SELECT * FROM sub_steps WHERE run_id = $1 ORDER BY stage_name, ordinal", run_id)
    ignored = {(r["field"], r["actual"]) for r in await rt.hosts.ignores(int(run["host_id"]))}
    diffs = [{**d, "host_ignored": (d["field"], d["actual"]) in ignored or (d["field"], None) in ignored}
             for d in await db.fetch("SELECT * FROM spec_diffs WHERE run_id = $1 ORDER BY id", run_id)]
    breaches = await db.fetch(
        "SELECT * FROM threshold_evaluations WHERE run_id = $1 AND passed = $2 ORDER BY id LIMIT 100", run_id, False)
    n_breaches = await db.fetchval("SELECT count(*) FROM threshold_evaluations WHERE run_id = $1 AND passed = $2", run_id, False)
    kinds = {r["kind"] for r in await db.fetch(
        "SELECT DISTINCT kind FROM artifacts WHERE run_id = $1 AND location = 'server'", run_id)}
    failed = next((s for s in stages if s["name"] == run["failed_stage"]), None)
    state = run["state"]
    return {
        "run": run, "stages": stages, "substeps": subs, "diffs": diffs, "breaches": breaches,
        "breach_count": int(n_breaches or 0), "has_report": "report_html" in kinds, "has_hold_key": "hold_key" in kinds,
        "wipe": wipe_findings(stages, run), "progress": rt.hub.progress.get(run_id) if state == "Running" else None,
        "live": state not in ENDED, "override_flags": jload(run["override_flags_json"], {}),
        "can_cancel": state in ACTIVE, "can_release": state in FAILED,
        "can_retry": state == "FailedHolding" and failed is not None and failed["runs_on"] != "orchestrator",
    }


class RunPageController(Controller):
    path = ""
    include_in_schema = False

    @get("/runs/{run_id:int}")
    async def show(self, request: Request, run_id: PathId) -> Template:
        return await self._page(request, run_id)

    async def _page(self, request: Request, run_id: int, status: int = 200, **extra: Any) -> Template:
        events_after = await event_cursor(request.app.state.rt.db)
        ctx = await run_context(request, run_id)
        charts = await live_charts(request.app.state.rt, ctx["run"], ctx["stages"])
        created = tokens(request).pop((request.state.ui_session.id, run_id), None)
        return page(request, "run.html.j2", status_code=status, **ctx, charts=charts, created=created,
                    public_url=request.app.state.rt.public_url, events_after=events_after, **extra)

    @get("/ui/runs/{run_id:int}/timeline")
    async def timeline(self, request: Request, run_id: PathId) -> Template:
        return page(request, "_run_timeline.html.j2", **await run_context(request, run_id))

    @get("/ui/runs/{run_id:int}/panel")
    async def panel(self, request: Request, run_id: PathId) -> Template:
        return page(request, "_run_panel.html.j2", **await run_context(request, run_id))

    @get("/ui/runs/{run_id:int}/charts")
    async def charts(self, request: Request, run_id: PathId) -> Template:
        rt = request.app.state.rt
        run = await listing.run_row(rt.db, run_id)
        if run is None:
            raise not_found(f"run {run_id} not found")
        stages = await listing.stages(rt.db, run_id)
        return page(request, "_run_charts.html.j2", run=run, charts=await live_charts(rt, run, stages),
                    live=run["state"] not in ENDED)

    # ------------------------------------------------------------------ decisions
    @post("/runs/{run_id:int}/{action:str}")
    async def act(self, request: Request, run_id: PathId, action: FromPath[str]) -> Response:
        form = await request.form()
        reason = str(form.get("reason", ""))[:2000]
        try:
            if action == "override":
                ctx = await run_context(request, run_id)
                disks = sorted(ctx["wipe"])
                if not disks:
                    raise conflict(f"run {run_id} is not waiting for a wipe override")
                typed = typed_disks(str(form.get("confirm", "")))
                if typed != disks:
                    return await self._page(request, run_id, 422, confirm_error=(
                        f"Type exactly the disks the probe found data on: {' '.join(disks)}"
                        + (f" (you typed: {' '.join(typed)})" if typed else "")), confirm_text=str(form.get("confirm", ""))[:500])
                await api.override(request, run_id, {"wipe": True},
                                   f"wipe override confirmed for {' '.join(disks)}" + (f": {reason}" if reason else ""))
            elif action in api.ACTIONS:
                await api.run_action(request, run_id, action, reason)
            else:
                raise not_found(f"no action {action!r} (cancel, retry-stage, override, release)")
        except ApiError as exc:
            if exc.status_code != 409:
                raise
            return await self._page(request, run_id, 409, action_error=exc.detail)
        request.app.state.rt.wake_dispatcher()
        return Redirect(path=f"/runs/{run_id}", status_code=303)

    @post("/runs/{run_id:int}/diffs/{diff_id:int}/ignore")
    async def ignore(self, request: Request, run_id: PathId, diff_id: PathId) -> Response:
        rt = request.app.state.rt
        user = request.state.ui_session.user
        reason = str((await request.form()).get("reason", ""))[:2000]
        await rt.hosts.ignore_difference(run_id, diff_id, reason, user)
        return Redirect(path=f"/runs/{run_id}#diffs", status_code=303)

    # ------------------------------------------------------------------ files
    @get("/runs/{run_id:int}/report")
    async def report(self, request: Request, run_id: PathId) -> Response:
        resp = await api.report(request, run_id, "html")
        # the report is self-contained (its own CSP allows no script or fetch): framed by the run page
        resp.headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'"
        resp.headers["X-Frame-Options"] = "SAMEORIGIN"
        return resp

    @get("/runs/{run_id:int}/hold-key")
    async def hold_key(self, request: Request, run_id: PathId) -> Response:
        return await api.hold_key(request, run_id)
