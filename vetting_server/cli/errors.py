"""What the ``vetting`` CLI says when something goes wrong: one line, the problem and
the fix, exit status 2 (usage) or 1 (runtime), never a traceback.

:class:`CliError` carries the line; :func:`database_error` and :func:`http_error`
translate what the database drivers and the server answer into such lines. The
command line's ``main`` prints any other exception as one line too (and the traceback
only with ``VETTING_DEBUG=1``).
"""

from __future__ import annotations

import sqlite3
from typing import Any
from urllib.parse import urlsplit

from ..db.database import safe_url

USAGE = 2
RUNTIME = 1


class CliError(Exception):
    """A problem the operator can fix; ``str()`` is the whole message (one line)."""

    def __init__(self, message: str, code: int = RUNTIME) -> None:
        super().__init__(" ".join(message.split()))
        self.code = code


def database_error(url: str, exc: BaseException) -> CliError:
    """The one line for a database that cannot be opened or migrated."""
    shown = safe_url(url)
    parts = urlsplit(url)
    where = f"{parts.hostname or 'localhost'}:{parts.port or 5432}"
    name = type(exc).__name__
    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] in ("asyncpg", "piccolo"):
        return CliError(f"{shown} is a PostgreSQL database but its driver ({exc.name}) is not installed: "
                        "pip install 'vetting[postgres]'")
    if name == "InvalidCatalogNameError":
        db = parts.path.lstrip("/") or "?"
        return CliError(f"the PostgreSQL database {db!r} does not exist on {where}: "
                        f"create it (createdb -h {parts.hostname or 'localhost'} {db}) or fix database.url")
    if name in ("InvalidPasswordError", "InvalidAuthorizationSpecificationError"):
        return CliError(f"PostgreSQL on {where} refused the login ({exc}): fix the user or password in database.url")
    if isinstance(exc, (ConnectionError, TimeoutError)) or (isinstance(exc, OSError) and not isinstance(exc, sqlite3.Error)):
        if url.startswith("sqlite"):
            return CliError(f"cannot open the SQLite database {shown}: {exc}: "
                            "check that its directory exists and is writable, or fix database.url")
        return CliError(f"cannot open the database {shown}: PostgreSQL at {where} is unreachable ({exc or name}): "
                        "is it running? check database.url (host, port)")
    if isinstance(exc, sqlite3.Error):
        return CliError(f"cannot open the SQLite database {shown}: {exc}: "
                        "check the path in database.url and that its directory is writable")
    return CliError(f"cannot open the database {shown}: {name}: {exc}")


# the fix for each HTTP status the operator API answers with
_HTTP_FIX = {
    400: "the request was malformed; check the command's arguments",
    401: "the server does not accept this token: create one with 'vetting token create' "
         "and pass it with --token or $VETTING_TOKEN",
    403: "this token is not allowed to do that: use an operator token",
    404: "check the id or name ('vetting run list', 'vetting host list')",
    409: "the run or host is not in a state that allows it ('vetting run show' says which)",
    413: "the request is too large",
    422: "fix the value named above",
}


def http_error(method: str, path: str, status: int, body: Any) -> CliError:
    """The one line for an error reply of the operator API (its ``detail`` included)."""
    detail = body.get("detail") if isinstance(body, dict) else None
    detail = str(detail or body or "").strip() or f"HTTP {status}"
    fix = _HTTP_FIX.get(status, "see the server log" if status >= 500 else "")
    what = {401: "unauthorized", 403: "forbidden", 404: "not found", 409: "conflict", 422: "invalid"}.get(status, "error")
    return CliError(f"{what} ({status} from {method} {path}): {detail}" + (f"; {fix}" if fix else ""))
