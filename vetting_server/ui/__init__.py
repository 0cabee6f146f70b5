"""The operator's web UI: server-rendered pages, htmx for partial updates, SSE for live data.

Jinja2 templates (``templates/``, rendered through ``litestar.plugins.jinja``), htmx and
its SSE extension, one small script (``static/app.js``: countdowns, log scrolling) and
one stylesheet, all served from the package under ``/static/ui/`` — no build step and
nothing fetched from elsewhere (datacenter networks are often air-gapped; the pages'
Content-Security-Policy allows only this origin). Pages are left out of the OpenAPI
document: the JSON API stays the contract for scripts.

Pages: ``/login``, ``/`` (dashboard, :mod:`.dashboard`), ``/hosts/new`` and
``/hosts/{id}`` (:mod:`.hosts`), ``/runs/{id}`` (:mod:`.runs`), ``/settings`` and
``/audit`` (:mod:`.admin`); fragments and event streams under ``/ui/``
(:mod:`.streams`). Who may do what: :mod:`.auth` and :mod:`.sessions`. ``docs/ui.md`` is
the operator's guide.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar import Request, Response, Router
from litestar.datastructures import CacheControlHeader, ResponseHeader
from litestar.exceptions import NotFoundException, ValidationException
from litestar.static_files import create_static_files_router

from ..errors import ApiError
from .admin import AdminController
from .auth import (
    Forbidden,
    LoginController,
    LoginRequired,
    forbidden_page,
    login_redirect,
    ui_guard,
)
from .dashboard import DashboardController
from .hosts import HostController
from .render import page, template_config
from .runs import RunPageController
from .sessions import SessionStore
from .streams import StreamController

STATIC_DIR = Path(__file__).parent / "static"
STATIC_PATH = "/static/ui"

# no script, style, frame or connection from anywhere but this server; styles may be inline
# attributes (the report's chart legend colours its swatches so)
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; frame-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'")
HEADERS = [
    ResponseHeader(name="Content-Security-Policy", value=CSP),
    ResponseHeader(name="X-Content-Type-Options", value="nosniff"),
    ResponseHeader(name="X-Frame-Options", value="DENY"),
    ResponseHeader(name="Referrer-Policy", value="same-origin"),
    ResponseHeader(name="Cache-Control", value="no-store"),
]


def _error_page(request: Request, exc: Exception) -> Response:
    if isinstance(exc, ApiError):
        status, message = exc.status_code, exc.detail
    elif isinstance(exc, NotFoundException):
        status, message = 404, "There is no such page."
    elif isinstance(exc, ValidationException):
        status, message = 400, exc.detail
    else:
        raise exc
    return page(request, "error.html.j2", status_code=status, title={404: "Not found"}.get(status, "Error"), message=message)


def router() -> Router:
    """The UI's routes: one guarded router for pages and fragments, one for the assets."""
    return Router(
        path="/",
        route_handlers=[LoginController, DashboardController, HostController, RunPageController, AdminController,
                        StreamController],
        guards=[ui_guard],
        include_in_schema=False,
        response_headers=HEADERS,
        exception_handlers={
            LoginRequired: login_redirect, Forbidden: forbidden_page, ApiError: _error_page,
            NotFoundException: _error_page, ValidationException: _error_page,
        },
    )


def static_router() -> Any:
    return create_static_files_router(path=STATIC_PATH, directories=[STATIC_DIR], include_in_schema=False,
                                      cache_control=CacheControlHeader(max_age=3600))


def install(app: Any) -> None:
    """State the UI keeps on the app: its session store, run tokens to show once."""
    app.state.ui_sessions = SessionStore(app.state.rt)
    app.state.ui_run_tokens = {}


__all__ = ["install", "router", "static_router", "template_config"]
