"""Piccolo queries on the project's own connections: the cold paths' query layer.

The operator's paths (hosts, operators and their tokens, settings, the audit log, run
listings) are written as Piccolo queries on the tables of :mod:`.tables`
(``Hosts.select().where(Hosts.mac == mac)``). Piccolo builds the SQL; :func:`rows`,
:func:`row`, :func:`value`, :func:`insert` and :func:`run` execute it on a :class:`.database.Database`
or inside one of its transactions. Why not on Piccolo's own engines: a host change and
its audit event must commit in one transaction with the events that wake the live
pages, on the same single SQLite writer (``BEGIN IMMEDIATE``) and asyncpg pool as the
rest of the server — Piccolo's engines would open a second pool, and on SQLite a new
connection per query outside a transaction.

A Piccolo query reads its dialect from its table's engine while it builds its SQL.
The tables are bound to :data:`QUERY_ENGINE`, which answers with the dialect of the
connection compiling the query (a context variable, set only for that synchronous
step), so one process can serve a SQLite and a PostgreSQL database side by side.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from piccolo.columns import Column
from piccolo.query.base import Query
from piccolo.table import Table

_PICCOLO_DIALECT = {"sqlite": "sqlite", "postgresql": "postgres"}
_dialect: ContextVar[str] = ContextVar("piccolo_dialect")


class QueryEngine:
    """What a Piccolo query asks its table's engine while it builds SQL: the dialect
    and, for SQLite, the library's version (``INSERT … RETURNING`` needs 3.35). It
    connects to nothing: :func:`compile_query` hands the SQL to the project's
    connections."""

    @property
    def engine_type(self) -> str:
        try:
            return _dialect.get()
        except LookupError:
            raise RuntimeError("Piccolo queries run through vetting_server.db.orm (rows, row, value, insert, run)") from None

    def get_version_sync(self) -> float:
        major, minor, _ = sqlite3.sqlite_version_info
        return float(f"{major}.{minor}")


QUERY_ENGINE = QueryEngine()


@contextmanager
def _compiling(dialect: str) -> Iterator[str]:
    engine_type = _PICCOLO_DIALECT[dialect]
    token = _dialect.set(engine_type)
    try:
        yield engine_type
    finally:
        _dialect.reset(token)


def compile_query(query: Query, dialect: str) -> list[tuple[str, list[Any]]]:
    """``query``'s SQL statements and their arguments for ``dialect`` (``sqlite`` or
    ``postgresql``): ``?`` placeholders for SQLite, ``$n`` for PostgreSQL."""
    with _compiling(dialect) as engine_type:
        return [qs.compile_string(engine_type=engine_type) for qs in query.querystrings]


def _one(query: Query, dialect: str) -> tuple[str, list[Any]]:
    (statement,) = compile_query(query, dialect)
    return statement


async def rows(conn: Any, query: Query) -> list[dict[str, Any]]:
    """The rows of a Piccolo ``select`` (or ``insert … returning``) as dicts, run on
    ``conn``: a database or one of its transactions."""
    sql, args = _one(query, conn.dialect)
    return await conn.fetch(sql, *args)


async def row(conn: Any, query: Query) -> dict[str, Any] | None:
    found = await rows(conn, query)
    return found[0] if found else None


async def value(conn: Any, query: Query) -> Any:
    """The first column of the first row (a ``count()``, an ``id``), or ``None``."""
    found = await row(conn, query)
    return None if found is None else next(iter(found.values()))


async def insert(conn: Any, table: type[Table], **values: Any) -> int:
    """Insert one row of ``table`` (unnamed columns take their defaults); its ``id``.
    The row is built here because a Piccolo row's serial key depends on the dialect."""
    with _compiling(conn.dialect):
        query = table.insert(table(**values)).returning(table._meta.primary_key)
    return int(await value(conn, query))


async def upsert(conn: Any, table: type[Table], target: Column, **values: Any) -> None:
    """Insert one row of ``table``, or update the other named columns of the row whose
    ``target`` (a unique column) has the same value: ``INSERT … ON CONFLICT … DO UPDATE``.
    Built here because ``on_conflict`` asks the dialect while it is called."""
    others = [getattr(table, name) for name in values if name != target._meta.name]
    with _compiling(conn.dialect):
        query = table.insert(table(**values)).on_conflict(target=target, action="DO UPDATE", values=others)
    await rows(conn, query)  # read: Piccolo adds RETURNING


async def run(conn: Any, query: Query) -> int:
    """Run a Piccolo ``update`` or ``delete``; the number of rows it changed."""
    sql, args = _one(query, conn.dialect)
    return await conn.execute(sql, *args)
