"""db.orm: Piccolo queries compiled for the connection that runs them."""

from __future__ import annotations

import anyio
import pytest

from vetting_server.db import orm
from vetting_server.db.database import UniqueViolation, connect_database, utcnow
from vetting_server.db.migrate import migrate
from vetting_server.db.tables import Hosts

from .conftest import PG_HOST, PG_PORT, _pg_up


@pytest.fixture
def pg_url(pg_databases) -> str:
    if not _pg_up():
        pytest.skip(f"PostgreSQL is not running on {PG_HOST}:{PG_PORT}")
    return pg_databases()


@pytest.mark.anyio
async def test_one_process_queries_sqlite_and_postgresql_side_by_side(tmp_path, pg_url):
    """The tables carry no engine of their own: each query is compiled for the database
    that runs it, also while the other engine's queries are in flight."""
    dbs = [connect_database(f"sqlite:///{tmp_path / 'a.db'}"), connect_database(pg_url)]
    for db in dbs:
        await db.open()
        await migrate(db)
    try:
        async def fill(db, prefix: str) -> None:
            for i in range(20):
                async with db.transaction() as tx:
                    now = utcnow()
                    await orm.insert(tx, Hosts, name=f"{prefix}{i}", mac=f"02:00:00:00:00:{i:02x}", created_at=now,
                                     updated_at=now)
                await orm.rows(db, Hosts.select().where(Hosts.name.like(f"{prefix}%")))

        async with anyio.create_task_group() as tg:
            tg.start_soon(fill, dbs[0], "lite")
            tg.start_soon(fill, dbs[1], "pg")
        for db, prefix in zip(dbs, ("lite", "pg"), strict=True):
            rows = await orm.rows(db, Hosts.select(Hosts.name, Hosts.agent_token_hash, Hosts.boot_provider)
                                  .order_by(Hosts.id))
            assert [r["name"] for r in rows] == [f"{prefix}{i}" for i in range(20)]
            # columns left out take the SQL's defaults: NULL, 'manual'
            assert {(r["agent_token_hash"], r["boot_provider"]) for r in rows} == {(None, "manual")}
            assert await orm.value(db, Hosts.count()) == 20
            with pytest.raises(UniqueViolation):
                async with db.transaction() as tx:
                    await orm.insert(tx, Hosts, name=f"{prefix}0", mac="02:00:00:00:01:00", created_at=utcnow(),
                                     updated_at=utcnow())
            changed = await orm.run(db, Hosts.update({Hosts.notes: "x"}).where(Hosts.name.like(f"{prefix}1%")))
            assert changed == 11  # 1 and 10..19
    finally:
        for db in dbs:
            await db.close()


@pytest.mark.anyio
async def test_a_query_run_outside_orm_says_how_to_run_it():
    with pytest.raises(RuntimeError, match="vetting_server.db.orm"):
        await Hosts.select().where(Hosts.id == 1).run()
