"""The migrated schema: Piccolo tables match it, pragmas are set, migrate is idempotent."""

from __future__ import annotations

import re

import pytest

from vetting_server.db.database import connect_database
from vetting_server.db.migrate import available, migrate
from vetting_server.db.tables import TABLES

pytestmark = pytest.mark.anyio

COMPOSITE_KEY = {"batches", "stage_results", "threshold_tallies", "settings", "firmware_plan_artifacts"}


async def _columns(db, table: str) -> dict[str, tuple[bool, object]]:
    """Each column of the migrated ``table``: (nullable, its SQL default as a value or ``NO_DEFAULT``)."""
    if db.dialect == "sqlite":
        rows = await db.fetch(f"PRAGMA table_info({table})")
        return {r["name"]: (not r["notnull"] and not r["pk"], _sql_default(r["dflt_value"])) for r in rows}
    rows = await db.fetch(
        "SELECT column_name, is_nullable, column_default FROM information_schema.columns WHERE table_name = $1", table
    )
    return {r["column_name"]: (r["is_nullable"] == "YES", _sql_default(r["column_default"])) for r in rows}


NO_DEFAULT = object()


def _sql_default(text: str | None) -> object:
    if text is None or text.startswith("nextval("):
        return NO_DEFAULT
    text = re.sub(r"::[a-z ]+$", "", text)  # PostgreSQL: 'manual'::text
    if text.startswith("'"):
        return text[1:-1].replace("''", "'")
    return {"false": 0.0, "true": 1.0}.get(text.lower()) if text.isalpha() else float(text)


def _piccolo_default(column) -> object:
    value = column.default
    if isinstance(value, bool | int | float):
        return float(value)
    return value


async def test_piccolo_tables_match_the_migrated_schema(database_url):
    """Same tables and columns, same nullability, and a row Piccolo inserts without a
    column gets what the SQL would give it: its SQL default, else NULL."""
    db = connect_database(database_url)
    await db.open()
    try:
        applied = await migrate(db)
        assert applied == [v for v, _ in available()]
        assert await migrate(db) == []  # idempotent
        wrong: list[str] = []
        for table in TABLES:
            name = table._meta.tablename
            columns = {c._meta.db_column_name: c for c in table._meta.columns}
            have = await _columns(db, name)
            assert have, f"table {name} missing"
            if name in COMPOSITE_KEY:
                columns.pop("id", None)
            assert set(columns) == set(have), (name, set(columns) ^ set(have))
            for col_name, column in columns.items():
                if column._meta.primary_key:
                    continue
                nullable, default = have[col_name]
                if column._meta.null != nullable:
                    wrong.append(f"{name}.{col_name}: {'' if nullable else 'not '}nullable in SQL")
                if default is not NO_DEFAULT and _piccolo_default(column) != default:
                    wrong.append(f"{name}.{col_name}: SQL default {default!r}, Piccolo {column.default!r}")
                if default is NO_DEFAULT and nullable and column.default is not None:
                    wrong.append(f"{name}.{col_name}: NULL by default in SQL, Piccolo {column.default!r}")
        assert not wrong, "\n".join(wrong)
    finally:
        await db.close()


async def test_sqlite_pragmas_and_no_memory(tmp_path):
    from vetting_server.db.database import DatabaseError

    with pytest.raises(DatabaseError, match="in-memory"):
        connect_database("sqlite:///:memory:")
    db = connect_database(f"sqlite:///{tmp_path / 'x.db'}", busy_timeout_ms=4321)
    await db.open()
    try:
        assert (await db.fetchval("PRAGMA journal_mode")).lower() == "wal"
        assert await db.fetchval("PRAGMA foreign_keys") == 1
        assert await db.fetchval("PRAGMA busy_timeout") == 4321
    finally:
        await db.close()


async def test_foreign_keys_cascade(database_url):
    from vetting_server.db.database import utcnow

    db = connect_database(database_url)
    await db.open()
    try:
        await migrate(db)
        now = utcnow()
        async with db.transaction() as tx:
            hid = await tx.fetchval(
                "INSERT INTO hosts (name, mac, created_at, updated_at) VALUES ('h', 'aa:bb:cc:dd:ee:ff', $1, $1) RETURNING id", now)
            rid = await tx.fetchval(
                "INSERT INTO runs (host_id, state, agent_token_hash, non_destructive, started_at, state_changed_at) "
                "VALUES ($1, 'Queued', 'x', $2, $3, $3) RETURNING id", hid, True, now)
            await tx.execute("INSERT INTO log_lines (run_id, ts, level, message) VALUES ($1, $2, 'info', 'm')", rid, now)
        async with db.transaction() as tx:
            await tx.execute("DELETE FROM hosts WHERE id = $1", hid)
        assert await db.fetchval("SELECT count(*) FROM log_lines") == 0
        assert await db.fetchval("SELECT count(*) FROM runs") == 0
    finally:
        await db.close()
