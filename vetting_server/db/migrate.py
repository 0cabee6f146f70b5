"""Schema migrations: numbered SQL files in ``migrations/``, applied in order.

Each file is one template rendered for the engine (SQLite or PostgreSQL) and applied
in a single transaction together with its row in ``schema_migrations``, so a crash
mid-migration leaves the schema at the previous version. Concurrent start-ups are
safe: SQLite's ``BEGIN IMMEDIATE`` and a PostgreSQL advisory lock serialise them.
Migrations are additive, as in the seed; they run at server start-up and with
``vetting db migrate``.
"""

from __future__ import annotations

from pathlib import Path

import structlog

from .database import Database, utcnow

log = structlog.get_logger()

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_ADVISORY_KEY = 0x7E771A6

_TYPES = {
    "sqlite": {
        "__PK__": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "__ROWID__": "INTEGER PRIMARY KEY",
        "__BIGINT__": "INTEGER",
        "__TS__": "TEXT",
        "__EPOCH__": "REAL",
        "__BOOL__": "INTEGER",
        "__REAL__": "REAL",
    },
    "postgresql": {
        "__PK__": "BIGSERIAL PRIMARY KEY",
        "__ROWID__": "BIGSERIAL PRIMARY KEY",
        "__BIGINT__": "BIGINT",
        "__TS__": "TIMESTAMPTZ",
        "__EPOCH__": "TIMESTAMPTZ",
        "__BOOL__": "BOOLEAN",
        "__REAL__": "DOUBLE PRECISION",
    },
}


def available() -> list[tuple[str, Path]]:
    return sorted((p.name.split("_", 1)[0], p) for p in MIGRATIONS_DIR.glob("[0-9]*.sql"))


def render(text: str, dialect: str) -> list[str]:
    for token, sql_type in _TYPES[dialect].items():
        text = text.replace(token, sql_type)
    lines = [ln for ln in text.splitlines() if not ln.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


async def migrate(db: Database) -> list[str]:
    """Apply pending migrations; return the versions applied now."""
    applied_now: list[str] = []
    async with db.transaction() as tx:
        await tx.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version TEXT PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
    for version, path in available():
        async with db.transaction() as tx:
            if db.dialect == "postgresql":
                await tx.execute(f"SELECT pg_advisory_xact_lock({_ADVISORY_KEY})")
            done = await tx.fetchval("SELECT version FROM schema_migrations WHERE version = $1", version)
            if done:
                continue
            for statement in render(path.read_text(), db.dialect):
                await tx.execute(statement)
            await tx.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                version,
                path.name,
                utcnow().isoformat(),
            )
            applied_now.append(version)
            log.info("db.migrated", version=version, name=path.name)
    return applied_now


async def current_version(db: Database) -> str | None:
    try:
        return await db.fetchval("SELECT max(version) FROM schema_migrations")
    except Exception:
        return None
