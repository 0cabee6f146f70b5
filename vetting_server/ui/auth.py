"""Who is asking, and may they: the web UI's login, guard and CSRF check.

- **Login** with the operator accounts of the API (``vetting admin create``) and the same
  rate limit, backoff and failure audit (:meth:`vetting_server.api.login.LoginGuard.authenticate`).
  The login form itself is protected against login CSRF by a double-submit token (a
  short-lived ``__Host-vetting-login`` cookie and the same value in the form).
- **Guard**: every page and fragment except the login needs a live session
  (:mod:`.sessions`); without one a page redirects to ``/login?next=…`` and an htmx request
  gets ``HX-Redirect``. The session's operator is handed to the API's handlers the way an
  API token's is (``request.state.operator_user``), so actions taken in the browser run the
  same code, checks and audit as the API's.
- **CSRF**: every state-changing request (POST) must carry the session's token, in the
  ``X-CSRF-Token`` header (htmx adds it to every request from ``hx-headers`` on ``<body>``)
  or the ``_csrf`` form field (plain forms); compared in constant time. A request whose
  ``Origin`` names another host, or that the browser marks ``Sec-Fetch-Site: cross-site``,
  is refused too. ``SameSite=Strict`` already keeps the cookie off cross-site requests;
  these checks do not rely on it.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any
from urllib.parse import quote, urlsplit

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.response import Redirect

from ..errors import ApiError
from ..runtime import AUDIT_SOURCE
from .render import is_htmx, page
from .sessions import COOKIE, SessionStore, session_cookie

LOGIN_COOKIE = "__Host-vetting-login"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "_csrf"
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class LoginRequired(Exception):
    pass


class Forbidden(Exception):
    pass


def store(request: Any) -> SessionStore:
    return request.app.state.ui_sessions


def client(request: Any) -> str:
    return request.client.host if request.client else "unknown"


def _same_origin(request: Any) -> bool:
    if request.headers.get("sec-fetch-site") == "cross-site":
        return False
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == request.headers.get("host")


async def ui_guard(connection: Any, handler: Any) -> None:
    if handler.opt.get("public"):
        return
    session = await store(connection).get(connection.cookies.get(COOKIE))
    if session is None:
        raise LoginRequired()
    connection.state.ui_session = session
    connection.state.operator_user = session.operator()  # what the API's handlers ask for
    AUDIT_SOURCE.set({"client": client(connection), "via": "web UI", "session": session.id})
    if connection.method in UNSAFE:
        if not _same_origin(connection):
            raise Forbidden("this request came from another site")
        sent = connection.headers.get(CSRF_HEADER) or (await connection.form()).get(CSRF_FIELD) or ""
        if not hmac.compare_digest(sent.encode(), session.csrf.encode()):
            raise Forbidden("the form is stale or did not come from this page (CSRF token missing or wrong): reload the page")


def login_redirect(request: Request, exc: Exception) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if is_htmx(request):
        target = request.headers.get("hx-current-url") and urlsplit(request.headers["hx-current-url"]).path or "/"
        return Response(b"", status_code=200, headers={"HX-Redirect": f"/login?next={quote(target)}"})
    return Redirect(f"/login?next={quote(target)}", status_code=303)


def login_cookie(value: str, max_age_s: int) -> Cookie:
    return Cookie(key=LOGIN_COOKIE, value=value, path="/", max_age=max_age_s, secure=True, httponly=True, samesite="strict")


def forbidden_page(request: Request, exc: Exception) -> Response:
    return page(request, "error.html.j2", status_code=403, title="Refused", message=str(exc))


def _next(value: str | None) -> str:
    """Only a path of this site (no ``//host`` or ``https://…``: no open redirect)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


class LoginController(Controller):
    path = ""
    include_in_schema = False

    @get("/login", opt={"public": True})
    async def login_form(self, request: Request) -> Response:
        if await store(request).get(request.cookies.get(COOKIE)) is not None:
            return Redirect(path=_next(request.query_params.get("next")), status_code=303)
        return self._form(request, "", None, 200)

    def _form(self, request: Request, username: str, error: str | None, status: int) -> Response:
        token = secrets.token_urlsafe(24)
        resp = page(request, "login.html.j2", status_code=status, login_csrf=token, username=username, error=error,
                    next=_next(request.query_params.get("next")), plain_http=request.url.scheme == "http"
                    and request.url.hostname not in ("127.0.0.1", "localhost", "::1"))
        resp.set_cookie(login_cookie(token, 3600))
        return resp

    @post("/login", opt={"public": True})
    async def login(self, request: Request) -> Response:
        form = await request.form()
        username, password = str(form.get("username", ""))[:256], str(form.get("password", ""))[:1024]
        sent, expected = str(form.get(CSRF_FIELD, "")), request.cookies.get(LOGIN_COOKIE, "")
        if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
            return self._form(request, username, "The login form expired or did not come from this page: try again.", 403)
        if not username or not password:
            return self._form(request, username, "Enter your user name and password.", 400)
        rt = request.app.state.rt
        AUDIT_SOURCE.set({"client": client(request), "via": "web UI"})
        try:
            user = await rt.login.authenticate(rt.db, username, password, client(request), rt.spawn)
        except ApiError as exc:
            message = exc.detail if exc.status_code == 429 else "Wrong user name or password."
            return self._form(request, username, message, exc.status_code)
        token, session = await store(request).create(user, client(request), request.headers.get("user-agent"))
        resp = Redirect(path=_next(str(form.get("next", "/"))), status_code=303)
        resp.set_cookie(session_cookie(token, (session.expires_at - session.created_at).total_seconds()))
        resp.set_cookie(login_cookie("", 0))
        return resp

    @post("/logout")
    async def logout(self, request: Request) -> Response:
        await store(request).end(request.state.ui_session)
        resp = Redirect(path="/login", status_code=303)
        resp.set_cookie(session_cookie("", 0))
        return resp
