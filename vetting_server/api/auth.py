"""Authentication of agents (per-run tokens, host tokens) and operators (API tokens).

Status codes: no token or a token that matches nothing → 401; a valid token of
*another* run → 403; the token of a finished run → 403 (except ``/heartbeat`` for a
grace period, so the agent still hears ``shutdown``/``abort``).
"""

from __future__ import annotations

import hmac
import time
from typing import Any

from vetting_core.statemachine import ENDED

from .. import accounts
from ..db.database import utcnow
from ..errors import forbidden, unauthorized
from ..runtime import AUDIT_SOURCE, HEARTBEAT_GRACE_S, RunAuth, Runtime
from ..security import token_hash
from .limits import check_path_id

OPERATOR_CACHE_S = 5.0


def runtime(request: Any) -> Runtime:
    return request.app.state.rt


def bearer(request: Any) -> str | None:
    return parse_bearer(request.headers.get("authorization"))


def parse_bearer(value: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value (None if absent)."""
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def agent_auth(request: Any, run_id: int, *, allow_finished: bool = False) -> RunAuth:
    cached = getattr(request.state, "agent_auth", None)
    if cached is not None and cached.run_id == run_id:
        return cached
    auth = await authenticate_run(runtime(request), bearer(request), run_id, allow_finished=allow_finished)
    request.state.agent_auth = auth
    return auth


def cached_run_auth(rt: Runtime, token: str | None, run_id: int, *, allow_finished: bool = False) -> RunAuth | None:
    """:func:`authenticate_run` without awaiting: the run from the cache when ``token``
    opens it, None when only the database can tell (a cache miss or another token).
    Raises the same errors for a missing token and a finished run."""
    if token is None:
        raise unauthorized("missing run token: send 'Authorization: Bearer <run token>'")
    auth = rt.runs.get(run_id)
    if auth is None or not hmac.compare_digest(token_hash(token), auth.token_hash):
        return None
    return _live(auth, allow_finished)


async def authenticate_run(rt: Runtime, token: str | None, run_id: int, *, allow_finished: bool = False) -> RunAuth:
    """The run that ``token`` opens, or the :class:`ApiError` to answer (401/403)."""
    auth = cached_run_auth(rt, token, run_id, allow_finished=allow_finished)
    if auth is not None:
        return auth
    assert token is not None
    h = token_hash(token)
    auth = await rt.refresh_run(run_id)  # not cached yet, or rotated by another replica or a host-mode pickup?
    if auth is None or not hmac.compare_digest(h, auth.token_hash):
        other = await rt.db.fetchval("SELECT id FROM runs WHERE agent_token_hash = $1", h)
        if other is not None and int(other) != run_id:
            raise forbidden(f"this token belongs to run {other}, not to run {run_id}")
        raise unauthorized(f"invalid token for run {run_id}")
    return _live(auth, allow_finished)


def _live(auth: RunAuth, allow_finished: bool) -> RunAuth:
    if auth.state in ENDED:
        done = auth.completed_at
        if not (allow_finished and done is not None and (utcnow() - done).total_seconds() < HEARTBEAT_GRACE_S):
            raise forbidden(f"run {auth.run_id} is finished ({auth.state}); its token is no longer accepted")
    return auth


async def operator(request: Any) -> dict[str, Any]:
    """The operator behind this request's API token (``{"id", "name", "token_id"}``)."""
    cached = getattr(request.state, "operator_user", None)
    if cached is not None:
        return cached
    user = await _operator(request)
    request.state.operator_user = user
    AUDIT_SOURCE.set({"client": request.client.host if request.client else None, "via": "api"})
    return user


async def operator_guard(connection: Any, _handler: Any) -> None:
    """Authenticate before the body is parsed: no token → 401 even for a bad body."""
    await operator(connection)


async def agent_guard(connection: Any, handler: Any) -> None:
    run_id = connection.path_params.get("run_id")
    if run_id is None:
        return
    check_path_id("run_id", run_id)  # before the database sees it
    await agent_auth(connection, int(run_id), allow_finished=bool(handler.opt.get("allow_finished")))


async def host_agent_guard(connection: Any, _handler: Any) -> None:
    if bearer(connection) is None:
        raise unauthorized("missing host agent token: send 'Authorization: Bearer <host agent token>'")


async def _operator(request: Any) -> dict[str, Any]:
    rt = runtime(request)
    token = bearer(request)
    if token is None:
        raise unauthorized("missing API token: send 'Authorization: Bearer <token>' (create one with 'vetting token create' or POST /api/v1/auth/token)")
    h = token_hash(token)
    now = time.monotonic()
    hit = rt.operator_tokens.get(h)
    if hit is None or now - hit[0] > OPERATOR_CACHE_S:
        user = await accounts.token_operator(rt.db, h)
        if len(rt.operator_tokens) > 10000:
            rt.operator_tokens.clear()
        rt.operator_tokens[h] = hit = (now, user)
    user = hit[1]
    if user is None:
        raise unauthorized("invalid or revoked API token")
    if user["token_id"] not in rt.token_use_logged:
        rt.token_use_logged.add(user["token_id"])
        async with rt.unit() as u:
            await accounts.token_used(u.tx, user["token_id"])
            await u.event("audit.token_used", f"API token {user['token_id']} of {user['name']} used", actor=user["name"],
                          data={"token_id": user["token_id"], "client": request.client.host if request.client else None})
    return user
