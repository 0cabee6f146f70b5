"""Server test fixtures: every test runs against SQLite *and* PostgreSQL.

``database_url`` is parametrised over both engines. PostgreSQL tests use a fresh
database per test (``vetting_test_<session>_<n>``, dropped at the end of the
session) on the server at 127.0.0.1:5432; when it is not reachable they skip with
that reason.

``env`` is an in-process server (the real app factory and lifespan, driven through
Litestar's ``AsyncTestClient``) with the test plugin :mod:`.server_plugin`; tests
that need a real process (restart, kill -9, CLI) use
:class:`tests.support.server.ServerProcess`.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
import secrets
import socket
from pathlib import Path
from typing import Any

import msgspec
import pytest

from vetting_core.config import settings_from_dict
from vetting_core.plugins import load_registry

from . import server_plugin

PG_HOST, PG_PORT = "127.0.0.1", 5432
PG_ADMIN = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/test"
_SESSION = secrets.token_hex(3)
_counter = itertools.count()


def _pg_up() -> bool:
    try:
        with socket.create_connection((PG_HOST, PG_PORT), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def pg_databases():
    """Creates databases on demand; drops them all at the end of the session."""
    import anyio

    created: list[str] = []

    async def _admin(sql: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(PG_ADMIN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def make() -> str:
        name = f"vetting_test_{_SESSION}_{next(_counter)}"
        anyio.run(_admin, f'CREATE DATABASE "{name}"')
        created.append(name)
        return f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{name}"

    yield make
    for name in created:
        try:
            anyio.run(_admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except Exception:
            pass


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path: Path, pg_databases) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'vetting.db'}"
    if not _pg_up():
        pytest.skip(f"PostgreSQL is not running on {PG_HOST}:{PG_PORT}")
    return pg_databases()


@pytest.fixture
def test_registry():
    return load_registry(plugins=[("server-test", server_plugin)])


def make_settings(database_url: str, tmp_path: Path, **sections: Any):
    data: dict[str, Any] = {
        "server": {"data_dir": str(tmp_path / "var"), "public_url": "http://testserver"},
        "database": {"url": database_url},
        "dispatcher": {"interval_s": 0.2},
    }
    for k, v in sections.items():
        data[k] = {**data.get(k, {}), **v}
    return settings_from_dict(data)


class Env:
    """An in-process server and helpers to drive it like an operator and an agent."""

    def __init__(self, app: Any, client: Any, token: str) -> None:
        self.app = app
        self.client = client
        self.token = token
        self.rt = app.state.rt

    async def op(self, method: str, path: str, **kw: Any):
        headers = {"Authorization": f"Bearer {self.token}", **kw.pop("headers", {})}
        return await self.client.request(method, path, headers=headers, **kw)

    async def agent(self, method: str, path: str, token: str | None, **kw: Any):
        headers = dict(kw.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return await self.client.request(method, path, headers=headers, **kw)

    async def create_host(self, name: str = "node1", mac: str = "aa:bb:cc:00:00:01", **kw: Any) -> dict[str, Any]:
        r = await self.op("POST", "/api/v1/hosts", json={"name": name, "mac": mac, **kw})
        assert r.status_code == 201, r.text
        return r.json()

    async def start_run(self, host_id: int, profile: str = "srvtest", **kw: Any) -> tuple[int, str]:
        r = await self.op("POST", "/api/v1/runs", json={"host_id": host_id, "profile": profile, **kw})
        assert r.status_code == 201, r.text
        body = r.json()
        return body["run"]["id"], body["agent_token"]

    async def detail(self, run_id: int) -> dict[str, Any]:
        r = await self.op("GET", f"/api/v1/runs/{run_id}")
        assert r.status_code == 200, r.text
        return r.json()

    async def running(self, host_name: str = "node1", mac: str = "aa:bb:cc:00:00:01", **kw: Any) -> tuple[int, str]:
        """A host and a run that has said hello and claimed: Running, first stage current."""
        host = await self.create_host(host_name, mac)
        run_id, tok = await self.start_run(host["id"], **kw)
        r = await self.agent("POST", f"/api/v1/runs/{run_id}/hello", tok, json={"agent_version": "t", "hostname": host_name})
        assert r.status_code == 200, r.text
        r = await self.agent("POST", f"/api/v1/runs/{run_id}/claim", tok, json={"agent_version": "t", "hostname": host_name})
        assert r.status_code == 200, r.text
        return run_id, tok

    async def wait_state(self, run_id: int, *states: str, timeout: float = 10.0) -> dict[str, Any]:
        import anyio

        with anyio.fail_after(timeout):
            while True:
                d = await self.detail(run_id)
                if d["run"]["state"] in states:
                    return d
                await anyio.sleep(0.05)


async def create_operator_token(rt: Any, user: str = "admin") -> str:
    from vetting_server.db.database import utcnow
    from vetting_server.security import new_token, token_hash

    token = new_token("vo_")
    async with rt.db.transaction() as tx:
        uid = await tx.fetchval("SELECT id FROM users WHERE name = $1", user)
        if uid is None:
            uid = await tx.fetchval(
                "INSERT INTO users (name, password_hash, created_at, disabled) VALUES ($1, NULL, $2, $3) RETURNING id",
                user, utcnow(), False,
            )
        await tx.execute(
            "INSERT INTO api_tokens (user_id, name, token_hash, created_at, revoked) VALUES ($1, 'test', $2, $3, $4)",
            int(uid), token_hash(token), utcnow(), False,
        )
    return token


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Override in a test module to change config sections for ``env``."""
    return {}


@asynccontextmanager
async def serve_in_process(app: Any) -> AsyncIterator[Any]:
    """Run ``app``'s real ASGI lifespan in this event loop and yield an httpx client
    talking to it (no sockets). Litestar's AsyncTestClient would run the app in a
    portal thread with its own loop instead."""
    import anyio
    import httpx

    to_app, app_in = anyio.create_memory_object_stream[dict](4)
    app_out, from_app = anyio.create_memory_object_stream[dict](4)
    async with anyio.create_task_group() as tg:
        tg.start_soon(app, {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, app_in.receive, app_out.send)
        await to_app.send({"type": "lifespan.startup"})
        msg = await from_app.receive()
        assert msg["type"] == "lifespan.startup.complete", msg
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver", timeout=30) as client:
                yield client
        finally:
            await to_app.send({"type": "lifespan.shutdown"})
            msg = await from_app.receive()
            assert msg["type"] == "lifespan.shutdown.complete", msg


@pytest.fixture
async def env(database_url, tmp_path, test_registry, settings_overrides):
    from vetting_server.app import create_app

    settings = make_settings(database_url, tmp_path, **settings_overrides)
    app = create_app(settings, registry=test_registry)
    async with serve_in_process(app) as client:
        token = await create_operator_token(app.state.rt)
        yield Env(app, client, token)


@asynccontextmanager
async def serve_on_socket(app: Any, **config: Any) -> AsyncIterator[Any]:
    """Serve ``app`` as ``vetting serve`` does (:func:`vetting_server.edge.serving.uvicorn_config`:
    uvicorn with :class:`~vetting_server.edge.http.EdgeProtocol`, timeouts, TLS) on a
    loopback socket in this event loop; yield the base URL."""
    import anyio
    import uvicorn

    from vetting_server.edge.serving import uvicorn_config

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    cfg = uvicorn_config(app, app.state.rt.settings, log_level="warning", **config)
    server = uvicorn.Server(cfg)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        with anyio.fail_after(30):
            while not server.started:
                await anyio.sleep(0.01)
        try:
            yield "%s://127.0.0.1:%d" % ("https" if cfg.is_ssl else "http", sock.getsockname()[1])
        finally:
            server.should_exit = True


@pytest.fixture
async def socket_env(database_url, tmp_path, test_registry, settings_overrides):
    """As ``env``, but served by uvicorn with :class:`~vetting_server.edge.http.EdgeProtocol`
    (as ``vetting serve`` does) on a loopback socket in this event loop."""
    import httpx

    from vetting_server.app import create_app

    app = create_app(make_settings(database_url, tmp_path, **settings_overrides), registry=test_registry)
    async with serve_on_socket(app) as base, httpx.AsyncClient(base_url=base, timeout=30) as client:
        yield Env(app, client, await create_operator_token(app.state.rt))


@pytest.fixture(params=["asgi", "socket"])
async def any_env(request, database_url, tmp_path, test_registry, settings_overrides):
    """``env`` (ASGI in process) and ``socket_env`` (uvicorn + EdgeProtocol): both route
    families of the hot agent routes."""
    import httpx

    from vetting_server.app import create_app

    app = create_app(make_settings(database_url, tmp_path, **settings_overrides), registry=test_registry)
    if request.param == "asgi":
        async with serve_in_process(app) as client:
            yield Env(app, client, await create_operator_token(app.state.rt))
        return
    async with serve_on_socket(app) as base, httpx.AsyncClient(base_url=base, timeout=30) as client:
        yield Env(app, client, await create_operator_token(app.state.rt))


def sample(ts: str, stage: str, kind: str, key: str, value: float | None, unit: str = "", text: str | None = None) -> list:
    """A Measurement in its wire form (array-like)."""
    return [ts, stage, kind, key, value, unit, text]


__all__ = ["Env", "make_settings", "msgspec", "sample"]
