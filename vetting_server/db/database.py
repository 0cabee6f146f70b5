"""The database layer: one small async interface over SQLite and PostgreSQL.

Two ways of writing a query run on it. The operator's cold paths (hosts, operators and
their tokens, settings, the audit log, run listings) are Piccolo queries on the tables
of :mod:`.tables`, compiled for this connection's dialect and run here by :mod:`.orm`.
The hot paths stay hand-written SQL with ``$1``-style parameters (rewritten to ``?1``
for SQLite): ingest (:mod:`vetting_server.ingest`), heartbeats and the agent's token
checks, and the run lifecycle's compare-and-set transitions (:func:`update_unchanged`,
:mod:`vetting_server.runs`). Why, measured on this project's 2-core machine:

- ingest writes batches with ``executemany`` (SQLite) and ``COPY`` (PostgreSQL):
  ≈1.2M rows/s on SQLite, against ≈33k rows/s through Piccolo's own engine, which
  also opens a new SQLite connection per query outside a transaction (a single-row
  select by id: p50 0.75 ms, p99 16 ms there, against 0.06 ms / 1.1 ms as plain SQL
  here);
- building a statement with Piccolo costs CPU on every call: 0.14 ms for a select by
  id, 0.44 ms for the 40-column run listing — nothing beside an operator's request,
  but ``bench/ingest.py`` at 10,000 agents makes ≈1,000 heartbeats and ≈220 batches a
  second, each several statements: a fifth to a half of one of the two cores;
- a transition needs the row count of ``UPDATE … WHERE state = $2 AND version = $3``
  inside a ``BEGIN IMMEDIATE`` transaction, which is one line of SQL here.

SQLite: one writer connection (WAL, ``foreign_keys``, ``busy_timeout``, every write
transaction opened with ``BEGIN IMMEDIATE``) serialised by a lock, plus a few reader
connections; all calls run in worker threads. PostgreSQL: an asyncpg pool opened in
the application lifespan.

Values: timestamps are timezone-aware ``datetime`` in Python; SQLite stores them as
ISO-8601 text in UTC with microseconds (so they sort as text) — except the
append-only hot tables (measurements, log lines, threshold evaluations and tallies),
where SQLite stores REAL Unix seconds (:func:`epoch`): a text timestamp in the
``(run_id, kind, ts)`` index halved the insert rate. PostgreSQL uses ``TIMESTAMPTZ``
everywhere. Booleans are ``INTEGER`` 0/1 in SQLite and ``BOOLEAN`` in
PostgreSQL; read them with :func:`as_bool`, timestamps with :func:`as_dt`.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from queue import SimpleQueue
from urllib.parse import urlsplit
from typing import Any

import anyio
import anyio.to_thread

_PARAM = re.compile(r"\$(\d+)")


class DatabaseError(RuntimeError):
    pass


class UniqueViolation(DatabaseError):
    pass


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime) -> str:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).isoformat(timespec="microseconds")


def epoch(dt: datetime) -> float:
    """Hot-table timestamp on SQLite: Unix seconds (float64: sub-microsecond today)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def as_dt(v: Any) -> datetime | None:
    if v is None or isinstance(v, datetime):
        return v
    if isinstance(v, (int, float)):
        return datetime.fromtimestamp(v, UTC)
    dt = datetime.fromisoformat(v)
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def as_bool(v: Any) -> bool:
    return bool(v)


def safe_url(url: str) -> str:
    """The database URL without its password (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password:
        return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")).geturl()
    return url


def sqlite_path(url: str) -> Path:
    """``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``."""
    if not url.startswith("sqlite:///"):
        raise DatabaseError(f"not a SQLite URL: {url!r} (expected sqlite:///path/to/file.db)")
    rest = url[len("sqlite:///"):]
    if not rest or ":memory:" in rest or rest.startswith("file:"):
        raise DatabaseError(
            "an in-memory SQLite database cannot be used: every connection would see a "
            "different database; give a file path"
        )
    return Path(rest)


class _Rows:
    """``fetchrow`` and ``fetchval`` from a class's ``fetch``: the databases and their
    transactions answer them the same way."""

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def fetchrow(self, sql: str, *args: Any) -> dict[str, Any] | None:
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = await self.fetchrow(sql, *args)
        return None if row is None else next(iter(row.values()))


class Database(_Rows):
    """Async interface; see :class:`SQLiteDatabase` and :class:`PostgresDatabase`."""

    dialect: str = ""
    url: str = ""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def execute(self, sql: str, *args: Any) -> int:
        async with self.transaction() as tx:
            return await tx.execute(sql, *args)

    def transaction(self) -> Any:
        raise NotImplementedError


# ---------------------------------------------------------------------------- SQLite


def _sqlite_sql(sql: str, _cache: dict[str, str] = {}) -> str:  # noqa: B006 - a cache
    out = _cache.get(sql)
    if out is None:
        out = _cache[sql] = _PARAM.sub(r"?\1", sql)
    return out


def _sqlite_args(args: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(iso(a) if isinstance(a, datetime) else a for a in args)


def _connect(path: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    conn = sqlite3.connect(
        str(path), timeout=busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False
    )
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable across a process crash
    return conn


class SQLiteTx(_Rows):
    """A write transaction on the writer connection (``BEGIN IMMEDIATE`` … ``COMMIT``)."""

    dialect = "sqlite"

    def __init__(self, db: SQLiteDatabase) -> None:
        self.db = db
        self.conn = db._writer

    async def _run(self, fn: Callable[[], Any]) -> Any:
        return await anyio.to_thread.run_sync(fn, limiter=self.db._write_limiter)

    async def execute(self, sql: str, *args: Any) -> int:
        q, a = _sqlite_sql(sql), _sqlite_args(args)
        try:
            return await self._run(lambda: self.conn.execute(q, a).rowcount)
        except sqlite3.IntegrityError as exc:
            if "UNIQUE" in str(exc):
                raise UniqueViolation(str(exc)) from exc
            raise

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        q = _sqlite_sql(sql)
        rows = [_sqlite_args(r) for r in rows]
        return await self._run(lambda: self.conn.executemany(q, rows).rowcount)

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        q, a = _sqlite_sql(sql), _sqlite_args(args)
        try:
            return await self._run(lambda: [dict(r) for r in self.conn.execute(q, a).fetchall()])
        except sqlite3.IntegrityError as exc:
            if "UNIQUE" in str(exc):
                raise UniqueViolation(str(exc)) from exc
            raise

    async def run_sync(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``fn(connection)`` in the writer thread inside this transaction (bulk paths)."""
        return await self._run(lambda: fn(self.conn))


class SQLiteDatabase(Database):
    dialect = "sqlite"

    def __init__(self, url: str, *, busy_timeout_ms: int = 5000, readers: int = 4) -> None:
        self.url = url
        self.path = sqlite_path(url)
        self.busy_timeout_ms = busy_timeout_ms
        self._n_readers = readers
        self._readers: SimpleQueue[sqlite3.Connection] = SimpleQueue()
        self._all: list[sqlite3.Connection] = []
        self._lock = anyio.Lock()
        self._write_limiter = anyio.CapacityLimiter(1)
        self._read_limiter = anyio.CapacityLimiter(readers)
        self._writer: sqlite3.Connection | None = None  # type: ignore[assignment]
        self._thread_lock = threading.Lock()

    async def open(self) -> None:
        def _open() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            w = _connect(self.path, self.busy_timeout_ms)
            mode = w.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise DatabaseError(f"could not switch {self.path} to WAL mode (got {mode})")
            self._writer = w
            self._all.append(w)
            for _ in range(self._n_readers):
                r = _connect(self.path, self.busy_timeout_ms)
                self._all.append(r)
                self._readers.put(r)

        await anyio.to_thread.run_sync(_open)

    async def close(self) -> None:
        for c in self._all:
            try:
                c.close()
            except sqlite3.Error:
                pass
        self._all.clear()

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        q, a = _sqlite_sql(sql), _sqlite_args(args)

        def run() -> list[dict[str, Any]]:
            conn = self._readers.get()
            try:
                return [dict(r) for r in conn.execute(q, a).fetchall()]
            finally:
                self._readers.put(conn)

        return await anyio.to_thread.run_sync(run, limiter=self._read_limiter)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SQLiteTx]:
        async with self._lock:
            tx = SQLiteTx(self)
            await tx._run(lambda: self._writer.execute("BEGIN IMMEDIATE"))
            try:
                yield tx
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await tx._run(lambda: self._writer.execute("ROLLBACK"))
                raise
            else:
                with anyio.CancelScope(shield=True):
                    await tx._run(lambda: self._writer.execute("COMMIT"))


# ------------------------------------------------------------------------ PostgreSQL


def _pg_rowcount(status: str) -> int:
    try:
        return int(status.rsplit(" ", 1)[-1])
    except (ValueError, IndexError):
        return 0


class PostgresTx(_Rows):
    dialect = "postgresql"

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def execute(self, sql: str, *args: Any) -> int:
        import asyncpg

        try:
            return _pg_rowcount(await self.conn.execute(sql, *args))
        except asyncpg.UniqueViolationError as exc:
            raise UniqueViolation(str(exc)) from exc

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        rows = list(rows)
        if rows:
            await self.conn.executemany(sql, rows)
        return len(rows)

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        import asyncpg

        try:
            return [dict(r) for r in await self.conn.fetch(sql, *args)]
        except asyncpg.UniqueViolationError as exc:
            raise UniqueViolation(str(exc)) from exc

    async def copy(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            await self.conn.copy_records_to_table(table, records=rows, columns=list(columns))


class PostgresDatabase(Database):
    dialect = "postgresql"

    def __init__(self, url: str, *, pool_min: int = 1, pool_max: int = 10) -> None:
        self.url = url.replace("postgres://", "postgresql://", 1)
        self.pool_min, self.pool_max = pool_min, pool_max
        self.pool: Any = None

    async def open(self) -> None:
        import asyncpg

        self.pool = await asyncpg.create_pool(
            self.url, min_size=self.pool_min, max_size=self.pool_max, command_timeout=60
        )

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
            self.pool = None

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        async with self.pool.acquire() as conn:
            return [dict(r) for r in await conn.fetch(sql, *args)]

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresTx]:
        async with self.pool.acquire() as conn, conn.transaction():
            yield PostgresTx(conn)


async def update_unchanged(tx: Any, table: str, row: Any, fields: dict[str, Any]) -> bool:
    """Compare-and-set: write ``fields`` into ``table``'s row ``row["id"]`` only while its
    ``state`` and ``version`` are still those of ``row`` (what the caller read), so two
    replicas or a retried request can never both move it. ``table`` is the caller's
    constant; ``fields`` should bump ``version``. Whether the row was written."""
    cols = list(fields)
    sets = ", ".join(f"{c} = ${i + 4}" for i, c in enumerate(cols))
    n = await tx.execute(
        f"UPDATE {table} SET {sets} WHERE id = $1 AND state = $2 AND version = $3",
        int(row["id"]), row["state"], int(row["version"]), *[fields[c] for c in cols],
    )
    return n == 1


def connect_database(url: str, *, busy_timeout_ms: int = 5000, pool_min: int = 1, pool_max: int = 10) -> Database:
    if url.startswith("sqlite://"):
        return SQLiteDatabase(url, busy_timeout_ms=busy_timeout_ms)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresDatabase(url, pool_min=pool_min, pool_max=pool_max)
    raise DatabaseError(f"unsupported database URL {url!r}: use sqlite:///path or postgresql://…")
