"""The operator API: hosts, runs, actions, events (and their SSE stream), reports.

Every route needs an operator API token (``Authorization: Bearer …``) except
``POST /api/v1/auth/token`` (log in with a password) and ``GET /healthz``. Every
change an operator makes is written to the events table with the operator's name.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.params import FromPath, FromQuery, JSONBody, Parameter, QueryParameter
from litestar.response import File, ServerSentEvent, ServerSentEventMessage

from vetting_core import __version__
from vetting_core.cmdline import MAX_LENGTH
from vetting_core.model import INT64_MAX
from vetting_core.statemachine import BUSY, sql_states
from vetting_core.text import printable

from .. import accounts
from ..db.database import as_dt
from ..db.migrate import current_version
from ..edge.fastbody import FastBody
from ..errors import ApiError, conflict, not_found
from ..metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ..runs import listing
from ..runs.artifacts import hold_dir, stored_file
from ..schemas import (
    ActionRequest,
    EventOut,
    HealthOut,
    HostCreate,
    HostOut,
    HostUpdate,
    LoginRequest,
    OverrideRequest,
    Page,
    RunCreated,
    RunDetail,
    RunOut,
    RunStart,
    SeriesOut,
    TokenReply,
)
from ..security import new_token, token_hash
from .auth import operator, operator_guard, runtime
from .limits import PathId, QueryId
from .views import event_out, host_out, run_detail, run_out, series


async def _run_row(request: Request, run_id: int) -> dict[str, Any]:
    row = await listing.run_row(runtime(request).db, run_id)
    if row is None:
        raise not_found(f"run {run_id} not found")
    return row


COMMAND_HEADER = "x-vetting-command"
"""The ``vetting`` CLI sends its own command line (secrets redacted) with the requests
it makes: a run started from it records that command as its origin."""


def run_origin(request: Request, user: str) -> str:
    """What started a run: the CLI's command line, else the API request itself."""
    command = request.headers.get(COMMAND_HEADER, "").strip()
    client = request.client.host if request.client else "?"
    via = f"POST {request.url.path} by {user} from {client}"
    if command:
        return f"{command[:MAX_LENGTH]}  # {via}"
    agent = request.headers.get("user-agent", "")[:100]
    return via + (f" ({agent})" if agent else "")


class SystemController(Controller):
    path = ""
    tags = ["system"]

    @get("/healthz", summary="Liveness and schema version")
    async def healthz(self, request: Request) -> HealthOut:
        rt = runtime(request)
        return HealthOut(status="ok", database=rt.db.dialect, schema_version=await current_version(rt.db), version=__version__)

    @get("/metrics", summary="Prometheus metrics (text exposition format)", media_type=METRICS_CONTENT_TYPE)
    async def metrics(self, request: Request) -> Response[bytes]:
        return Response(await runtime(request).metrics.render(), media_type=METRICS_CONTENT_TYPE)

    @post("/api/v1/auth/token", status_code=201, summary="Log in with a password; returns a new API token",
          dto=FastBody[LoginRequest], return_dto=None, opt={"rate_limited": True})
    async def login(self, request: Request, data: JSONBody[LoginRequest]) -> TokenReply:
        rt = runtime(request)
        source = request.client.host if request.client else "unknown"
        user = await rt.login.authenticate(rt.db, data.username, data.password, source, rt.spawn)
        token = new_token("vo_")
        async with rt.unit() as u:
            await accounts.create_token(u.tx, int(user["id"]), data.token_name[:100], token_hash(token))
            await u.event("audit.login", f"{user['name']} logged in (new token {data.token_name[:100]!r})", actor=user["name"])
        return TokenReply(token=token, user=user["name"], name=data.token_name[:100])


class HostController(Controller):
    """``/api/v1/hosts``: the HTTP face of :class:`..hosts.service.HostService`."""

    guards = [operator_guard]
    path = "/api/v1/hosts"
    tags = ["hosts"]

    @get("", summary="List hosts")
    async def list_hosts(self, request: Request, limit: int = Parameter(default=100, ge=1, le=1000),
                         offset: int = Parameter(default=0, ge=0, le=INT64_MAX)) -> Page[HostOut]:
        await operator(request)
        rows, total = await runtime(request).hosts.page(limit, offset)
        return Page(items=[host_out(r) for r in rows], total=total, limit=limit, offset=offset)

    @post("", status_code=201, summary="Register a host (the reply shows its host-mode agent token once)",
          dto=FastBody[HostCreate], return_dto=None)
    async def create_host(self, request: Request, data: JSONBody[HostCreate]) -> HostOut:
        user = await operator(request)
        host, token = await runtime(request).hosts.create(data, user["name"])
        return host_out(host, agent_token=token)

    @get("/{host_id:int}", summary="One host")
    async def get_host(self, request: Request, host_id: PathId) -> HostOut:
        await operator(request)
        return host_out(await runtime(request).hosts.get(host_id))

    @patch("/{host_id:int}", summary="Change a host", dto=FastBody[HostUpdate], return_dto=None)
    async def update_host(self, request: Request, host_id: PathId, data: JSONBody[HostUpdate]) -> HostOut:
        user = await operator(request)
        return host_out(await runtime(request).hosts.update(host_id, data, user["name"]))

    @delete("/{host_id:int}", status_code=204, summary="Delete a host and its run history")
    async def delete_host(self, request: Request, host_id: PathId) -> None:
        user = await operator(request)
        await runtime(request).hosts.delete(host_id, user["name"])

    @post("/{host_id:int}/agent-token", status_code=201, summary="Issue a new host-mode agent token")
    async def rotate_token(self, request: Request, host_id: PathId) -> HostOut:
        user = await operator(request)
        host, token = await runtime(request).hosts.rotate_token(host_id, user["name"])
        return host_out(host, agent_token=token)

    @get("/{host_id:int}/events", summary="A host's history: operator actions and run events")
    async def host_events(self, request: Request, host_id: PathId, limit: int = Parameter(default=200, ge=1, le=1000),
                          after: int = Parameter(default=0, ge=0, le=INT64_MAX)) -> list[EventOut]:
        await operator(request)
        await runtime(request).hosts.get(host_id)
        rows = await listing.events(runtime(request).db, after=after, limit=limit, host_id=host_id)
        return [event_out(r) for r in rows]


class RunController(Controller):
    """``/api/v1/runs``: starting, listing and showing runs, their series, history, logs,
    reports and hold key, and the operator's actions (override, retry, release, cancel),
    which it hands to :class:`..runs.service.RunService`."""

    guards = [operator_guard]
    path = "/api/v1/runs"
    tags = ["runs"]

    @post("", status_code=201, summary="Start a run (the reply shows the run's agent token once)",
          dto=FastBody[RunStart], return_dto=None)
    async def start_run(self, request: Request, data: JSONBody[RunStart]) -> RunCreated:
        user = await operator(request)
        rt = runtime(request)
        by_id = data.host_id is not msgspec.UNSET
        if by_id == (data.host is not msgspec.UNSET):
            raise ApiError(422, "host_id: give exactly one of host_id and host (a host name)", {"field": "host_id"})
        host = await rt.hosts.find(host_id=data.host_id) if by_id else await rt.hosts.find(name=data.host)
        if host is None:
            ref = data.host_id if by_id else data.host
            raise ApiError(422, f"host_id: no such host ({ref})", {"field": "host_id"})
        busy = await rt.db.fetchval(
            f"SELECT id FROM runs WHERE host_id = $1 AND state IN {sql_states(BUSY)}",
            int(host["id"]),
        )
        if busy:
            raise conflict(f"host {host['name']} already has run {busy} in progress or held; cancel or release it first",
                           run_id=int(busy))
        if data.stages is not None and not data.stages:
            raise ApiError(422, "stages: give at least one stage, or leave it out for the whole profile", {"field": "stages"})
        run, token = await rt.service.create_run(
            host, profile=data.profile or rt.settings.runs.default_profile, non_destructive=data.non_destructive, stages=data.stages, actor=user["name"],
            origin=run_origin(request, user["name"]),
        )
        run["host_name"] = host["name"]
        return RunCreated(
            run=run_out(run), agent_token=token, ipxe_url=f"{rt.public_url}/ipxe/{host['mac']}",
            kernel_params=f"vetting.server={rt.public_url} vetting.run={run['id']} vetting.token={token}",
        )

    @get("", summary="List runs (filter, paginate, order)")
    async def list_runs(
        self,
        request: Request,
        run_state: str | None = QueryParameter(name="state", default=None),
        host_id: QueryId = None,
        host: FromQuery[str | None] = None,
        profile: FromQuery[str | None] = None,
        result: FromQuery[str | None] = None,
        limit: int = Parameter(default=50, ge=1, le=500),
        offset: int = Parameter(default=0, ge=0, le=INT64_MAX),
        order_by: str = Parameter(default="-id", description=f"one of {sorted(listing.RUN_ORDER)}, '-' for descending"),
    ) -> Page[RunOut]:
        await operator(request)
        key = order_by.lstrip("-")
        if key not in listing.RUN_ORDER:
            raise ApiError(422, f"order_by: {order_by!r} is not one of {', '.join(sorted(listing.RUN_ORDER))} "
                           "(prefix '-' to reverse)", {"field": "order_by"})
        db = runtime(request).db
        filters: dict[str, Any] = {"state": run_state, "host_id": host_id, "host": host, "profile": profile, "result": result}
        total = await listing.count_runs(db, **filters)
        rows = await listing.runs(db, **filters, order_by=key, descending=order_by.startswith("-"), limit=limit,
                                  offset=offset)
        return Page(items=[run_out(r) for r in rows], total=total, limit=limit, offset=offset)

    @get("/{run_id:int}", summary="Run detail: stages, sub-steps, diffs, thresholds, breaches, series")
    async def get_run(self, request: Request, run_id: PathId, points: int = Parameter(default=60, ge=1, le=2000)) -> RunDetail:
        await operator(request)
        detail = await run_detail(runtime(request).db, run_id, points=points)
        if detail is None:
            raise not_found(f"run {run_id} not found")
        return detail

    @get("/{run_id:int}/series", summary="Downsampled measurement series")
    async def get_series(self, request: Request, run_id: PathId, kind: FromQuery[str | None] = None,
                         key: FromQuery[str | None] = None, points: int = Parameter(default=200, ge=1, le=5000)) -> list[SeriesOut]:
        await operator(request)
        await _run_row(request, run_id)
        return await series(runtime(request).db, run_id, kind=kind, key=key, points=points, max_series=500)

    @get("/{run_id:int}/events", summary="A run's history")
    async def run_events(self, request: Request, run_id: PathId, after: int = Parameter(default=0, ge=0, le=INT64_MAX),
                         limit: int = Parameter(default=500, ge=1, le=5000)) -> list[EventOut]:
        await operator(request)
        await _run_row(request, run_id)
        rows = await listing.events(runtime(request).db, after=after, limit=limit, run_id=run_id)
        return [event_out(r) for r in rows]

    @get("/{run_id:int}/logs", summary="The run's log lines as text", media_type="text/plain")
    async def run_logs(self, request: Request, run_id: PathId, after: int = Parameter(default=0, ge=0, le=INT64_MAX),
                       limit: int = Parameter(default=10000, ge=1, le=200000)) -> Response[str]:
        await operator(request)
        await _run_row(request, run_id)
        rows = await runtime(request).db.fetch(
            "SELECT id, ts, stage, level, message FROM log_lines WHERE run_id = $1 AND id > $2 ORDER BY id LIMIT $3",
            run_id, after, limit,
        )
        text = "".join(
            # stored raw; shown with control characters escaped (vetting_core.text: ANSI, CR/LF)
            f"{as_dt(r['ts']).isoformat(timespec='milliseconds')} {printable(r['level']):<7} [{printable(r['stage'] or '-')}] "
            f"{printable(r['message'])}\n"
            for r in rows
        )
        return Response(text, media_type="text/plain")

    async def _action(self, request: Request, run_id: int, action: str, reason: str, flags: dict | None = None) -> RunOut:
        user = await operator(request)
        rt = runtime(request)
        await _run_row(request, run_id)
        await rt.service.operator_action(run_id, action, actor=user["name"], reason=reason, flags=flags)
        rt.wake_dispatcher()
        return run_out(await _run_row(request, run_id))

    @post("/{run_id:int}/override", status_code=200, summary="Override (e.g. the wipe probe): retry the held stage",
          dto=FastBody[OverrideRequest], return_dto=None)
    async def override(self, request: Request, run_id: PathId, data: JSONBody[OverrideRequest]) -> RunOut:
        return await self._action(request, run_id, "override", data.reason, data.flags)

    @post("/{run_id:int}/retry-stage", status_code=200, summary="Run the held run's failed stage again (no gate overridden)",
          dto=FastBody[ActionRequest], return_dto=None)
    async def retry_stage(self, request: Request, run_id: PathId, data: JSONBody[ActionRequest | None] = None) -> RunOut:
        return await self._action(request, run_id, "retry_stage", data.reason if data else "")

    @post("/{run_id:int}/release", status_code=200, summary="Release a failed or held host", dto=FastBody[ActionRequest], return_dto=None)
    async def release(self, request: Request, run_id: PathId, data: JSONBody[ActionRequest | None] = None) -> RunOut:
        return await self._action(request, run_id, "release", data.reason if data else "")

    @post("/{run_id:int}/cancel", status_code=200, summary="Cancel a run", dto=FastBody[ActionRequest], return_dto=None)
    async def cancel(self, request: Request, run_id: PathId, data: JSONBody[ActionRequest | None] = None) -> RunOut:
        return await self._action(request, run_id, "cancel", data.reason if data else "")

    @get("/{run_id:int}/report/{fmt:str}", summary="Download a report: json, html or ocptv",
         opt={"media_types": ["application/json", "text/html", "application/jsonl"]})
    async def report(self, request: Request, run_id: PathId, fmt: FromPath[str]) -> File:
        await operator(request)
        kinds = {"json": "report", "html": "report_html", "ocptv": "report_ocptv"}
        if fmt not in kinds:
            raise not_found(f"unknown report format {fmt!r} (json, html, ocptv)")
        rt = runtime(request)
        row = await rt.db.fetchrow(
            "SELECT path FROM artifacts WHERE run_id = $1 AND kind = $2 AND location = 'server' ORDER BY id DESC LIMIT 1",
            run_id, kinds[fmt],
        )
        path = stored_file(row and row["path"], rt.reporting.out_dir(run_id))
        if path is None:
            raise not_found(f"run {run_id} has no {fmt} report (yet)")
        media = {"json": "application/json", "html": "text/html", "ocptv": "application/jsonl"}[fmt]
        return File(path=path, filename=path.name, media_type=media, content_disposition_type="inline")

    @get("/{run_id:int}/hold-key", summary="The private SSH key of the run's hold")
    async def hold_key(self, request: Request, run_id: PathId) -> File:
        user = await operator(request)
        rt = runtime(request)
        row = await rt.db.fetchrow(
            "SELECT path FROM artifacts WHERE run_id = $1 AND kind = 'hold_key' AND location = 'server' ORDER BY id DESC LIMIT 1",
            run_id,
        )
        path = stored_file(row and row["path"], hold_dir(rt, run_id))
        if path is None:
            raise not_found(f"run {run_id} has no hold key")
        async with rt.unit() as u:
            await u.event("audit.hold_key", f"hold key of run {run_id} downloaded by {user['name']}", run_id=run_id, actor=user["name"])
        return File(path=path, filename=f"vetting-run-{run_id}-hold-key", media_type="application/octet-stream")


class EventController(Controller):
    guards = [operator_guard]
    path = "/api/v1/events"
    tags = ["events"]

    @get("", summary="The event log (all runs and hosts)")
    async def list_events(self, request: Request, after: int = Parameter(default=0, ge=0, le=INT64_MAX),
                          limit: int = Parameter(default=200, ge=1, le=5000)) -> list[EventOut]:
        await operator(request)
        rows = await listing.events(runtime(request).db, after=after, limit=limit)
        return [event_out(r) for r in rows]

    @get("/stream", summary="Server-sent events: run events live (Last-Event-ID resumes)")
    async def stream(self, request: Request, run_id: QueryId = None,
                     last_event_id: int | None = QueryParameter(name="last_event_id", default=None, ge=0, le=INT64_MAX)) -> ServerSentEvent:
        await operator(request)
        rt = runtime(request)
        header = request.headers.get("last-event-id")
        start = last_event_id
        if header:
            try:
                start = int(header)
            except ValueError:
                raise ApiError(400, f"Last-Event-ID must be an event id (a number), got {header!r}") from None
        if start is None:
            start = int(await rt.db.fetchval("SELECT coalesce(max(id), 0) FROM events") or 0)

        async def gen() -> Any:
            yield ServerSentEventMessage(comment="vetting event stream", retry=2000)
            async for row, progress in follow_events(rt, start, run_id):
                if row is not None:
                    yield ServerSentEventMessage(
                        data=msgspec.json.encode(event_out(row)).decode(), event=row["kind"], id=str(row["id"])
                    )
                elif progress is not None:
                    yield ServerSentEventMessage(data=msgspec.json.encode(progress).decode(), event="progress")
                else:
                    yield ServerSentEventMessage(comment="keep-alive")

        return ServerSentEvent(gen(), headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def follow_events(rt: Any, start: int, run_id: int | None = None, idle_s: float = 15.0) -> Any:
    """The event stream's source (the API's ``/events/stream`` and the web UI's): yields
    ``(events row, None)`` for each event after id ``start`` (of ``run_id``, or all), then
    ``(None, progress)`` for each run whose progress changed (the current progress first:
    a watcher joining mid-stage sees it at once), and ``(None, None)`` after ``idle_s``
    without either. Rows come from the events table, so a reconnect resumes from its
    last id and replicas see each other's events; the hub only says when to look."""
    last = start
    progress_seen = 0
    while True:
        if run_id is None:
            rows = await rt.db.fetch("SELECT * FROM events WHERE id > $1 ORDER BY id LIMIT 500", last)
        else:
            rows = await rt.db.fetch("SELECT * FROM events WHERE id > $1 AND run_id = $2 ORDER BY id LIMIT 500", last, run_id)
        for r in rows:
            last = int(r["id"])
            yield r, None
        if rt.hub.progress_seq != progress_seen:
            for rid, p in list(rt.hub.progress.items()):
                if p["_seq"] > progress_seen and (run_id is None or rid == run_id):
                    yield None, {k: v for k, v in p.items() if k != "_seq"}
            progress_seen = rt.hub.progress_seq
        if len(rows) < 500:
            seq = rt.hub.progress_seq
            await rt.hub.wait(idle_s)
            if rt.hub.progress_seq == seq and not rows:
                yield None, None
