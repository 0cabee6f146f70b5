"""The Litestar application factory.

``create_app(settings, registry=None)`` builds the app; the lifespan opens the
database (SQLite file or PostgreSQL pool), applies migrations, reloads live runs,
and starts the background tasks (ingest writer, dispatcher, watchdog, heartbeat
flush, janitor, notification dispatcher) in one task group.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import msgspec
import structlog
from litestar import Litestar, Request, Response
from litestar.exceptions import HTTPException, SerializationException, ValidationException
from litestar.datastructures import CacheControlHeader
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import RedocRenderPlugin, SwaggerRenderPlugin
from litestar.static_files import create_static_files_router
from litestar.routes import HTTPRoute

from vetting_core import __version__
from vetting_core.config import Settings
from vetting_core.plugins import Registry, load_registry
from vetting_core.protocol import ErrorBody

from .api import contract
from .edge import routes as edge
from . import ui
from .api.agent import EDGE_ROUTES, AgentController, ArtifactController, artifact_body_limit
from .api.operator import EventController, HostController, RunController, SystemController
from .db.database import safe_url
from .errors import ApiError, error_body, internal_error_body
from .firmware.api import FirmwareArtifactController, FirmwareController, FirmwareImageController, RemediationController
from .firmware.runner import CampaignRunner
from .firmware.store import FirmwareStore
from .ingest.writer import Ingest
from .metrics import Metrics
from .api.login import LoginGuard
from .db.migrate import migrate
from .peers import PeerService
from .pxe.bootfiles import BootFileController
from .boot.netboot import NetBoot
from .boot.power import PowerControl
from .pxe.supervisor import PxeSupervisor
from .runs.reporting import Reporting
from .runs.service import RunService
from .hosts.service import HostService
from .runtime import Runtime
from .runs.scheduler import Scheduler
from .settings_service import RuntimeSettings

log = structlog.get_logger()


def _error(status: int, detail: str, extra: Any = None, headers: dict[str, str] | None = None) -> Response[ErrorBody]:
    return Response(error_body(status, detail, extra), status_code=status, headers=headers)


def _api_error(request: Request, exc: ApiError) -> Response[ErrorBody]:
    return _error(exc.status_code, exc.detail, exc.extra, exc.headers)


def _validation_error(request: Request, exc: ValidationException) -> Response[ErrorBody]:
    """A body or parameter that does not match its schema: 400, naming the field."""
    extra = exc.extra if isinstance(exc.extra, (dict, list)) else None
    detail = exc.detail or "invalid request"
    if isinstance(extra, list) and any(isinstance(e, dict) and e.get("source") == "body" and e.get("key") == "data" for e in extra):
        # no body at all (a body that is there is decoded, and refused, by FastBody)
        what = f"{request.method} {request.url.path}"
        return _error(400, f"malformed JSON body: {what} needs a JSON body (got none)", {"field": "$"})
    if extra and isinstance(extra, list):
        msgs = [f"{e.get('key', '')}: {e.get('message', '')}".strip(": ") for e in extra if isinstance(e, dict)]
        if msgs:
            detail = f"{detail}: {'; '.join(msgs)}"
    return _error(400, detail, extra)


def _http_error(request: Request, exc: HTTPException) -> Response[ErrorBody]:
    extra = exc.extra if isinstance(exc.extra, (dict, list)) else None
    detail = exc.detail
    if isinstance(exc.__cause__, SerializationException):
        detail = f"malformed JSON body: {detail}"
    if exc.status_code == 413:
        limit = request.route_handler.resolve_request_max_body_size() if request.scope.get("route_handler") else None
        detail = f"request body too large (limit {limit} bytes)" if limit else "request body too large"
    return _error(exc.status_code, detail, extra, getattr(exc, "headers", None))


def _internal_error(request: Request, exc: Exception) -> Response[ErrorBody]:
    log.exception("request.failed", path=request.url.path, error=f"{type(exc).__name__}: {exc}")
    body = internal_error_body(exc)
    return Response(body, status_code=body.status_code)


_ERRORS = {
    400: "malformed JSON or a body/parameter that does not match its schema",
    401: "missing or invalid token",
    403: "a token of another run, or of a finished run",
    404: "no such host, run or report",
    409: "conflict with the run's state, a different second result, a duplicate name or MAC",
    413: "request body over the limit",
    422: "invalid MAC, host name, expected spec, profile or stage (extra.field names it)",
    502: "the host's BMC did not answer or refused (the message names it)",
    503: "no test peer free right now (retry later)",
}


def _document_errors(*controllers: type) -> None:
    """Every handler documents the ErrorBody of its error responses in the OpenAPI doc."""
    from litestar.handlers import HTTPRouteHandler
    from litestar.openapi.datastructures import ResponseSpec

    specs = {code: ResponseSpec(data_container=ErrorBody, description=text) for code, text in _ERRORS.items()}
    for ctrl in controllers:
        for value in vars(ctrl).values():
            if isinstance(value, HTTPRouteHandler):
                value.responses = {**specs, **(value.responses or {})}


class VettingApp(Litestar):
    """The Litestar app, with the hot agent routes (heartbeat, sensor, log) answered
    before routing (:mod:`.edge.routes`)."""

    rt: Runtime
    _allow: list[tuple[re.Pattern[str], bytes]] | None = None

    def allowed(self, path: str) -> bytes | None:
        """The ``Allow`` header of ``path``: every method its handlers take. Litestar's own
        OPTIONS answer named the methods of one handler only (``GET /api/v1/hosts/{id}``
        answered ``DELETE, OPTIONS``)."""
        if self._allow is None:
            kinds = {"int": r"\d+", "path": r".*"}
            self._allow = [
                (re.compile(re.sub(r"\{\w+:(\w+)\}", lambda m: kinds.get(m[1], r"[^/]+"), r.path)),
                 ", ".join(sorted(r.methods)).encode())
                for r in self.routes if isinstance(r, HTTPRoute)
            ]
        path = path.rstrip("/") or "/"
        return next((allow for rx, allow in self._allow if rx.fullmatch(path)), None)

    def edge_route(self, path: str) -> tuple[int, edge.EdgeRoute] | None:
        """(run id, route) when ``path`` is one of the hot agent routes' (a POST)."""
        m = edge.PATH.fullmatch(path)
        route = EDGE_ROUTES.get(m[2]) if m is not None else None
        return None if route is None else (int(m[1]), route)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and (hit := self.edge_route(scope["path"])) is not None:
            rt = self.rt
            await edge.answer(rt, scope, receive, send, *hit, rt.settings.server.max_agent_body_bytes)
            return
        if scope["type"] == "http" and ("\x00" in scope["path"] or b"%00" in scope["query_string"]):
            # PostgreSQL cannot store or compare text holding U+0000 (limits.decode refuses it in bodies)
            body = msgspec.json.encode(error_body(400, "the path or query contains U+0000 (NUL)"))
            await send({"type": "http.response.start", "status": 400,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]})
            await send({"type": "http.response.body", "body": body})
            return
        if scope["type"] == "http" and scope["method"] == "OPTIONS" and (allow := self.allowed(scope["path"])) is not None:
            await send({"type": "http.response.start", "status": 204, "headers": [(b"allow", allow)]})
            await send({"type": "http.response.body", "body": b""})
            return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings, registry: Registry | None = None) -> Litestar:
    if registry is None:
        registry = load_registry(blocked=settings.plugins.disable)
    rt = Runtime(settings, registry)
    rt.service = RunService(rt)
    rt.hosts = HostService(rt)
    rt.metrics = Metrics(rt)
    rt.ingest = Ingest(rt)
    rt.scheduler = Scheduler(rt)
    rt.reporting = Reporting(rt)
    rt.peers = PeerService(settings.peers, registry.peer_pools)
    rt.pxe = PxeSupervisor(rt)
    rt.power = PowerControl(rt)
    rt.netboot = NetBoot(rt)
    rt.firmware = FirmwareStore(rt)
    rt.campaigns = CampaignRunner(rt, rt.firmware)
    rt.runtime_settings = RuntimeSettings(rt)

    async def audit_login_failures(message: str, data: dict[str, Any], actor: str | None) -> None:
        async with rt.unit() as u:
            await u.event("audit.login_failed", message, level="warning", actor=actor, data=data)

    rt.login = LoginGuard(settings.login, audit_login_failures)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        try:
            await rt.db.open()
        except Exception as exc:
            log.error("database.unavailable", url=safe_url(settings.database.url), error=f"{type(exc).__name__}: {exc}")
            raise SystemExit(f"vetting: cannot open the database {safe_url(settings.database.url)}: {exc}") from None
        try:
            await migrate(rt.db)
            await rt.runtime_settings.load()  # the web UI's overrides of runtime keys
            await rt.refresh_all_runs()
            async with anyio.create_task_group() as tg:
                rt.tg = tg
                notifier = _notifier(rt)
                if notifier is not None:
                    await notifier.__aenter__()
                    rt.notifier = notifier
                tg.start_soon(rt.ingest.run)
                tg.start_soon(rt.scheduler.run)
                tg.start_soon(rt.peers.run)
                tg.start_soon(rt.pxe.run)
                tg.start_soon(rt.campaigns.run)
                tg.start_soon(rt.runtime_settings.run)
                try:
                    yield
                finally:
                    with anyio.CancelScope(shield=True):
                        try:
                            await rt.scheduler.flush_heartbeats()
                        except Exception as exc:
                            log.error("shutdown.flush_failed", error=str(exc))
                    if notifier is not None:
                        # not inside the shield: the dispatcher's own task group must be
                        # exited in the cancel-scope order it was entered
                        rt.notifier = None
                        await notifier.__aexit__(None, None, None)
                    tg.cancel_scope.cancel()
        finally:
            rt.tg = None
            with anyio.CancelScope(shield=True):
                await rt.peers.close()
            await rt.db.close()

    firmware = (FirmwareController, FirmwareArtifactController, RemediationController)
    _document_errors(SystemController, AgentController, ArtifactController, HostController, RunController, EventController,
                     BootFileController, *firmware)
    # a subclass per app, so that two apps in one process keep their own limits
    agent = type("AgentController", (AgentController,), {"request_max_body_size": settings.server.max_agent_body_bytes})
    artifacts = type("ArtifactController", (ArtifactController,),
                     {"request_max_body_size": artifact_body_limit(settings.server.max_artifact_bytes)})
    images = type("FirmwareArtifactController", (FirmwareArtifactController,),
                  {"request_max_body_size": settings.firmware.max_image_bytes})
    app = VettingApp(
        route_handlers=[SystemController, agent, artifacts, HostController, RunController, EventController,
                        create_static_files_router(path=OPENAPI_ASSETS, directories=[OPENAPI_DIR],
                                                   include_in_schema=False, cache_control=CacheControlHeader(max_age=86400)),
                        BootFileController, FirmwareController, images, RemediationController, FirmwareImageController,
                        *([ui.router(), ui.static_router()] if settings.ui.enabled else [])],
        template_config=ui.template_config(),
        lifespan=[lifespan],
        exception_handlers={
            ApiError: _api_error,
            ValidationException: _validation_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
        openapi_config=openapi_config(),
        request_max_body_size=settings.server.max_operator_body_bytes,
        debug=False,
    )
    app.state.rt = app.rt = rt
    contract.install(app)
    ui.install(app)
    return app


OPENAPI_DIR = Path(__file__).parent / "static" / "openapi"
OPENAPI_ASSETS = "/static/openapi"


def openapi_config() -> OpenAPIConfig:
    """``/schema`` (Redoc), ``/schema/redoc`` and ``/schema/swagger``, every asset served
    from the package (:data:`OPENAPI_DIR`): a management network is often air-gapped."""
    favicon = f"<link rel='icon' type='image/png' href='{OPENAPI_ASSETS}/favicon-32x32.png'>"
    return OpenAPIConfig(
        title="Vetting orchestrator", version=__version__, path="/schema",
        render_plugins=[
            RedocRenderPlugin(js_url=f"{OPENAPI_ASSETS}/redoc.standalone.js", google_fonts=False, favicon=favicon,
                              path=["/", "/redoc"]),
            SwaggerRenderPlugin(
                js_url=f"{OPENAPI_ASSETS}/swagger-ui-bundle.js", css_url=f"{OPENAPI_ASSETS}/swagger-ui.css",
                standalone_preset_js_url=f"{OPENAPI_ASSETS}/swagger-ui-standalone-preset.js", favicon=favicon,
            ),
        ],
    )


def _notifier(rt: Runtime) -> Any:
    """The notification dispatcher, when ``vetting_notifiers`` is installed and targets exist."""
    try:
        from vetting_notifiers.dispatch import NotificationDispatcher
    except ImportError as exc:
        log.warning("notifications.unavailable", error=str(exc))
        return None
    try:
        return NotificationDispatcher(rt.registry, rt.settings.notifications, rt.record_delivery)
    except Exception as exc:
        log.error("notifications.config_failed", error=f"{type(exc).__name__}: {exc}")
        raise


__all__ = ["create_app", "msgspec"]
