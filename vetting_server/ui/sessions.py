"""Server-side sessions of the web UI.

The browser holds only a random 256-bit id in the cookie ``__Host-vetting-session``
(``Secure``, ``HttpOnly``, ``SameSite=Strict``, ``Path=/``, no ``Domain``: the ``__Host-``
prefix makes the browser refuse it otherwise); the ``ui_sessions`` row keeps its
SHA-256, the operator, a CSRF token and two deadlines: ``idle_until`` (pushed forward
while the session is used, ``ui.session_idle_minutes``) and ``expires_at`` (the login
plus ``ui.session_absolute_hours``, never extended). Rows live in the database, so a
session survives a restart and works on every replica; a logout, a disabled operator or
a deleted row ends it at once. The use of a session is written back at most once a
minute (:data:`TOUCH_S`), which is the precision of the idle deadline.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from litestar.datastructures import Cookie

from .. import accounts
from ..db.database import as_dt, utcnow
from ..runtime import Runtime
from ..security import new_token, token_hash

COOKIE = "__Host-vetting-session"
TOUCH_S = 60.0


@dataclass(frozen=True)
class Session:
    id: int
    user_id: int
    user: str
    csrf: str
    created_at: datetime
    idle_until: datetime
    expires_at: datetime

    def operator(self) -> dict[str, Any]:
        """The operator as the API's handlers know one (:func:`vetting_server.api.auth.operator`)."""
        return {"id": self.user_id, "name": self.user, "token_id": None}


def session_cookie(token: str, max_age_s: float) -> Cookie:
    return Cookie(key=COOKIE, value=token, path="/", max_age=max(0, int(max_age_s)), secure=True, httponly=True,
                  samesite="strict")


class SessionStore:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    @property
    def idle(self) -> timedelta:
        return timedelta(minutes=self.rt.settings.ui.session_idle_minutes)

    @property
    def absolute(self) -> timedelta:
        return timedelta(hours=self.rt.settings.ui.session_absolute_hours)

    async def create(self, user: dict[str, Any], client: str | None, user_agent: str | None) -> tuple[str, Session]:
        """A new session for ``user`` (a ``users`` row); returns the cookie's value."""
        token = new_token("vs_")
        csrf = secrets.token_urlsafe(32)
        now = utcnow()
        idle_until, expires_at = now + min(self.idle, self.absolute), now + self.absolute
        async with self.rt.unit() as u:
            # the expired sessions of everyone go with each login: the table stays small
            await accounts.drop_expired_sessions(u.tx, now)
            sid = await accounts.create_session(
                u.tx, token_hash=token_hash(token), user_id=int(user["id"]), csrf=csrf, now=now, idle_until=idle_until,
                expires_at=expires_at, client=client, user_agent=(user_agent or "")[:300],
            )
            await u.event("audit.ui_login", f"{user['name']} logged in to the web UI", actor=user["name"],
                          data={"session": int(sid)})
        return token, Session(int(sid), int(user["id"]), user["name"], csrf, now, idle_until, expires_at)

    async def get(self, token: str | None) -> Session | None:
        """The live session of a cookie value, or None (absent, unknown, expired, disabled)."""
        if not token or len(token) > 100:
            return None
        row = await accounts.session_by_token(self.rt.db, token_hash(token))
        if row is None or row["disabled"]:
            return None
        now = utcnow()
        idle_until, expires_at = as_dt(row["idle_until"]), as_dt(row["expires_at"])
        if now >= idle_until or now >= expires_at:
            return None
        if (now - as_dt(row["last_seen_at"])).total_seconds() >= TOUCH_S:
            idle_until = min(now + self.idle, expires_at)
            await accounts.touch_session(self.rt.db, int(row["id"]), now, idle_until)
        return Session(int(row["id"]), int(row["user_id"]), row["name"], row["csrf_token"], as_dt(row["created_at"]),
                       idle_until, expires_at)

    async def end(self, session: Session) -> None:
        async with self.rt.unit() as u:
            await accounts.delete_session(u.tx, session.id)
            await u.event("audit.ui_logout", f"{session.user} logged out of the web UI", actor=session.user,
                          data={"session": session.id})
