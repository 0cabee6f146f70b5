"""Operator accounts: users, their API tokens and their web UI sessions.

The one place that reads and writes ``users``, ``api_tokens`` and ``ui_sessions``
(Piccolo queries through :mod:`.db.orm`): the API's token check and password login
(:mod:`.api.auth`, :mod:`.api.login`, ``POST /api/v1/auth/token``), the web UI's
sessions (:mod:`.ui.sessions`) and the CLI's ``admin``/``token`` commands call these
functions. Each takes ``conn``, a database or the transaction the caller writes in, so
a change and its audit event commit together. What a token or a session *means*
(caching, deadlines, cookies, rate limits) stays with those callers.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .db import orm
from .db.database import utcnow
from .db.tables import ApiTokens, UiSessions, Users

# ---------------------------------------------------------------------- users


async def user_by_name(conn: Any, name: str) -> dict[str, Any] | None:
    """The ``users`` row named ``name`` (every column), or None."""
    return await orm.row(conn, Users.select().where(Users.name == name))


async def create_user(conn: Any, name: str, password_hash: str | None) -> int:
    """A new enabled operator (``password_hash`` None: API tokens only); its id."""
    return await orm.insert(conn, Users, name=name, password_hash=password_hash, created_at=utcnow(), disabled=False)


async def ensure_user(db: Any, name: str, password_hash: str | None) -> tuple[int, bool]:
    """The id of the operator named ``name``, created (in a transaction of the database
    ``db``) when there is none; (id, created)."""
    user = await user_by_name(db, name)
    if user is not None:
        return int(user["id"]), False
    async with db.transaction() as tx:
        return await create_user(tx, name, password_hash), True


async def set_password(conn: Any, user_id: int, password_hash: str) -> None:
    await orm.run(conn, Users.update({Users.password_hash: password_hash}).where(Users.id == user_id))


async def replace_password(conn: Any, user_id: int, old_hash: str, new_hash: str) -> None:
    """Store ``new_hash`` (a rehash of the same password) only while the stored hash is
    still ``old_hash``: a password changed meanwhile wins."""
    query = Users.update({Users.password_hash: new_hash}).where((Users.id == user_id) & (Users.password_hash == old_hash))
    await orm.run(conn, query)


# ---------------------------------------------------------------------- API tokens


async def create_token(conn: Any, user_id: int, name: str, token_hash: str) -> int:
    """Store a new API token of ``user_id`` (only its SHA-256); its id."""
    return await orm.insert(conn, ApiTokens, user_id=user_id, name=name, token_hash=token_hash, created_at=utcnow(),
                            revoked=False)


async def token_operator(conn: Any, token_hash: str) -> dict[str, Any] | None:
    """The operator an API token opens, as the API's handlers know one (``{"id", "name",
    "token_id"}``); None for an unknown or revoked token or a disabled operator."""
    user = ApiTokens.user_id
    row = await orm.row(conn, ApiTokens.select(
        ApiTokens.id.as_alias("token_id"), ApiTokens.revoked, user.id.as_alias("id"), user.name.as_alias("name"),
        user.disabled.as_alias("disabled"),
    ).where(ApiTokens.token_hash == token_hash))
    if row is None or row["revoked"] or row["disabled"]:
        return None
    return {"id": int(row["id"]), "name": row["name"], "token_id": int(row["token_id"])}


async def token_used(conn: Any, token_id: int) -> None:
    """Stamp the token's ``last_used_at`` with now."""
    await orm.run(conn, ApiTokens.update({ApiTokens.last_used_at: utcnow()}).where(ApiTokens.id == token_id))


# ---------------------------------------------------------------------- web UI sessions


async def drop_expired_sessions(conn: Any, now: datetime) -> None:
    """Delete every operator's sessions past either deadline."""
    await orm.run(conn, UiSessions.delete().where((UiSessions.expires_at < now) | (UiSessions.idle_until < now)))


async def create_session(conn: Any, *, token_hash: str, user_id: int, csrf: str, now: datetime, idle_until: datetime,
                         expires_at: datetime, client: str | None, user_agent: str) -> int:
    """Store a new session (last seen ``now``); its id."""
    return await orm.insert(conn, UiSessions, token_hash=token_hash, user_id=user_id, csrf_token=csrf, created_at=now,
                            last_seen_at=now, idle_until=idle_until, expires_at=expires_at, client=client,
                            user_agent=user_agent)


async def session_by_token(conn: Any, token_hash: str) -> dict[str, Any] | None:
    """The session whose cookie hashes to ``token_hash``, with its operator's ``name`` and
    ``disabled``; None when there is none. Deadlines are the caller's to check."""
    s, user = UiSessions, UiSessions.user_id
    return await orm.row(conn, s.select(
        s.id, s.user_id, s.csrf_token, s.created_at, s.last_seen_at, s.idle_until, s.expires_at,
        user.name.as_alias("name"), user.disabled.as_alias("disabled"),
    ).where(s.token_hash == token_hash))


async def touch_session(conn: Any, session_id: int, now: datetime, idle_until: datetime) -> None:
    """The session was used at ``now``: its idle deadline moves to ``idle_until``."""
    await orm.run(conn, UiSessions.update({UiSessions.last_seen_at: now, UiSessions.idle_until: idle_until})
                  .where(UiSessions.id == session_id))


async def delete_session(conn: Any, session_id: int) -> None:
    await orm.run(conn, UiSessions.delete().where(UiSessions.id == session_id))
