"""Password logins: rate limited, the same work for every name, hashed off the event loop.

``POST /api/v1/auth/token`` is the one route that takes a guessable secret, without a
token, from anyone who reaches the server. What it does about that (issue 18):

- **Rate limit with backoff**, per user name and per source address: the first
  ``login.free_attempts`` failures of either are free; then each further attempt is
  refused with 429 and ``Retry-After`` for ``login.backoff_s``, doubling with every
  failure up to ``login.max_backoff_s``. An attempt counts when it starts, so a burst of
  concurrent guesses is cut off as well as a sequence; a success clears both counters.
  Counters live in the server process (several replicas: each counts its own), at most
  :data:`MAX_KEYS` of them (the oldest are dropped).
- **The same work for an unknown user**: a name that does not exist, is disabled or has
  no password is verified against a dummy argon2id hash, so the reply takes as long as
  for a wrong password (no user enumeration by timing).
- **Hashing in a worker thread** (:mod:`.security`, argon2id), at most two at a time: the
  event loop keeps answering heartbeats during a burst of logins. A correct password with
  an older hash (scrypt) is rehashed and stored.
- **Bounded audit**: failures are counted per (name, source) and written as one
  ``audit.login_failed`` event per ``login.audit_interval_s`` at most (the first at once),
  with the counts — never one row per attempt.
"""

from __future__ import annotations

import math
import time
from collections import Counter, OrderedDict
from typing import Any

import anyio
import anyio.to_thread

from vetting_core.config import LoginSettings

from .. import accounts
from ..errors import ApiError, unauthorized
from ..security import hash_password, verify_password

MAX_KEYS = 100_000  # counters kept (per name and per source)
MAX_AUDITED = 20  # (name, source) pairs named in one audit row; the rest are summed

_dummy: str | None = None


def _dummy_hash() -> str:
    global _dummy
    if _dummy is None:
        _dummy = hash_password("no such user: the same work as a wrong password")
    return _dummy


class _Counter:
    __slots__ = ("fails", "until")

    def __init__(self) -> None:
        self.fails = 0
        self.until = 0.0


class LoginGuard:
    def __init__(self, settings: LoginSettings, audit: Any) -> None:
        self.s = settings
        self._audit = audit  # async (message, data, actor) -> None: writes one event row
        self._keys: OrderedDict[str, _Counter] = OrderedDict()
        self._limiter = anyio.CapacityLimiter(2)
        self._pending: Counter[tuple[str, str]] = Counter()
        self._last_audit = -math.inf
        self._flush_scheduled = False

    # ------------------------------------------------------------------ rate limit
    def _counter(self, key: str) -> _Counter:
        c = self._keys.get(key)
        if c is None:
            c = self._keys[key] = _Counter()
            if len(self._keys) > MAX_KEYS:
                self._keys.popitem(last=False)
        return c

    def begin(self, user: str, source: str) -> None:
        """Count an attempt, or refuse it (429) while the name or the source is backing off."""
        now = time.monotonic()
        counters = (self._counter(f"u:{user}"), self._counter(f"s:{source}"))
        wait = max(c.until for c in counters) - now
        if wait > 0:
            raise ApiError(
                429, f"too many failed logins for {user!r} or from {source}: try again in {math.ceil(wait)} s",
                {"retry_after_s": math.ceil(wait)}, headers={"Retry-After": str(math.ceil(wait))},
            )
        for c in counters:
            c.fails += 1
            if c.fails >= self.s.free_attempts:
                c.until = now + min(self.s.backoff_s * 2 ** (c.fails - self.s.free_attempts), self.s.max_backoff_s)

    def succeeded(self, user: str, source: str) -> None:
        self._keys.pop(f"u:{user}", None)
        self._keys.pop(f"s:{source}", None)

    async def authenticate(self, db: Any, name: str, password: str, source: str, spawn: Any) -> dict[str, Any]:
        """The ``users`` row when ``password`` is right (rehashed when its hash is old),
        else the :class:`ApiError` to answer: 429 while backing off, 401 for a wrong name
        or password, after the same work either way. The API's login and the web UI's."""
        key = name[:64]
        self.begin(key, source)  # 429 while backing off
        user = await accounts.user_by_name(db, name)
        ok, rehash = await self.verify(password, None if user is None or user["disabled"] else user["password_hash"])
        if not ok:
            await self.failed(key, source, spawn)
            raise unauthorized("wrong user name or password")
        self.succeeded(key, source)
        if rehash:  # an older hash (scrypt): replaced now that the password is at hand
            await accounts.replace_password(db, int(user["id"]), user["password_hash"], await self.rehash(password))
        return user

    # ------------------------------------------------------------------ hashing
    async def verify(self, password: str, stored: str | None) -> tuple[bool, bool]:
        """(matches, should be rehashed), in a worker thread; an absent hash is checked
        against the dummy one (and never matches)."""
        if not stored:
            dummy = _dummy_hash()
            await anyio.to_thread.run_sync(verify_password, password, dummy, limiter=self._limiter)
            return False, False
        return await anyio.to_thread.run_sync(verify_password, password, stored, limiter=self._limiter)

    async def rehash(self, password: str) -> str:
        return await anyio.to_thread.run_sync(hash_password, password, limiter=self._limiter)

    # ------------------------------------------------------------------ audit
    async def failed(self, user: str, source: str, spawn: Any) -> None:
        """Count a failure for the audit: written now when no row was written in the last
        interval, else once the interval is over (``spawn`` starts that in the background)."""
        if (user, source) in self._pending or len(self._pending) < MAX_KEYS:
            self._pending[(user, source)] += 1
        else:
            self._pending[("…", "…")] += 1
        if self._flush_scheduled:
            return
        wait = self._last_audit + self.s.audit_interval_s - time.monotonic()
        if wait <= 0:
            await self.flush()
        else:
            self._flush_scheduled = True

            async def later() -> None:
                await anyio.sleep(wait)
                self._flush_scheduled = False
                await self.flush()

            spawn(later)

    async def flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, Counter()
        self._last_audit = time.monotonic()
        top = pending.most_common(MAX_AUDITED)
        total = sum(pending.values())
        named = ", ".join(f"{u!r} from {c} ({n}×)" for (u, c), n in top)
        more = f" and {len(pending) - len(top)} more" if len(pending) > len(top) else ""
        data = {
            "total": total, "window_s": self.s.audit_interval_s, "distinct": len(pending),
            "failures": [{"user": u, "client": c, "count": n} for (u, c), n in top],
        }
        users = {u for u, _ in pending}
        await self._audit(f"{total} failed login{'s' if total > 1 else ''}: {named}{more}", data,
                          next(iter(users)) if len(users) == 1 else None)

