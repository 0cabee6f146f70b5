"""Fixtures of the firmware-campaign tests: a real server on a loopback socket (so a BMC
can download an image from it), on SQLite and PostgreSQL, with every installed plugin;
and test BMCs (:class:`tests.support.firmware_bmc.FirmwareBmc`)."""

from __future__ import annotations

import socket
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.server.conftest import Env, create_operator_token, database_url, make_settings, pg_databases  # noqa: F401
from tests.support.firmware_bmc import FirmwareBmc

BMC_PW_ENV = "VETTING_TEST_BMC_PW"


class FwEnv(Env):
    """``Env`` plus the firmware API."""

    bmcs: list[FirmwareBmc]

    async def ok(self, method: str, path: str, status: int = 200, **kw: Any) -> Any:
        r = await self.op(method, path, **kw)
        assert r.status_code == status, r.text
        return r.json()

    async def add_artifact(self, data: bytes, component: str, version: str, **params: Any) -> dict[str, Any]:
        return await self.ok("POST", "/api/v1/firmware/artifacts", 201, content=data,
                             params={"component": component, "version": version, "filename": f"{component}-{version}.bin",
                                     **params})

    async def bmc_host(self, name: str, bmc: FirmwareBmc, *, spec_yaml: str = "", **config: Any) -> dict[str, Any]:
        """A host whose redfish BMC is ``bmc``: it boots through it, and its firmware
        provider is the same BMC polled every 0.2 s (``config`` adds to that)."""
        mac = "02:00:00:00:%02x:%02x" % divmod(len(self.bmcs) + 1, 256)
        self.bmcs.append(bmc)
        host = await self.create_host(name, mac, boot_provider="redfish", expected_spec_yaml=spec_yaml,
                                      boot_config=bmc.config(password_env=BMC_PW_ENV))
        await self.ok("PUT", f"/api/v1/firmware/hosts/{host['id']}/provider", json={
            "kind": "redfish", "config": bmc.config(password_env=BMC_PW_ENV, poll_interval_s=0.2, **config)})
        return host

    async def plan(self, doc: dict[str, Any], *, start: bool = True) -> dict[str, Any]:
        d = await self.ok("POST", "/api/v1/firmware/plans", 201, json=doc)
        if start:
            d = await self.ok("POST", f"/api/v1/firmware/plans/{d['plan']['id']}/start", json={})
        return d

    async def wait_plan(self, plan_id: int, *states: str, timeout: float = 60.0) -> dict[str, Any]:
        with anyio.fail_after(timeout):
            while True:
                d = await self.ok("GET", f"/api/v1/firmware/plans/{plan_id}")
                if d["plan"]["state"] in states:
                    return d
                await anyio.sleep(0.1)

    async def wait_update(self, plan_id: int, host: str, predicate: Any, timeout: float = 30.0) -> dict[str, Any]:
        with anyio.fail_after(timeout):
            while True:
                d = await self.ok("GET", f"/api/v1/firmware/plans/{plan_id}")
                u = next(x for x in d["updates"] if x["host_name"] == host)
                if predicate(u):
                    return u
                await anyio.sleep(0.05)

    async def plan_events(self, plan_id: int) -> list[dict[str, Any]]:
        return await self.ok("GET", f"/api/v1/firmware/plans/{plan_id}/events")


@pytest.fixture
def fw_settings() -> dict[str, Any]:
    """Override in a test module to change config sections."""
    return {}


@pytest.fixture
async def fw(database_url, tmp_path, monkeypatch, fw_settings):  # noqa: F811
    """A server (real app and lifespan, uvicorn) on a loopback socket in this event loop."""
    import uvicorn

    from vetting_core.plugins import load_registry
    from vetting_server.app import create_app

    monkeypatch.setenv(BMC_PW_ENV, "s3cret")  # FirmwareBmc's password
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    base = "http://127.0.0.1:%d" % sock.getsockname()[1]
    sections = {"firmware": {"interval_s": 0.2, "image_base_url": base}, "hold": {"enabled": False},
                "server": {"public_url": base}, **fw_settings}
    app = create_app(make_settings(database_url, tmp_path, **sections), registry=load_registry())
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        with anyio.fail_after(30):
            while not server.started:
                await anyio.sleep(0.01)
        try:
            async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                env = FwEnv(app, client, await create_operator_token(app.state.rt))
                env.bmcs = []
                yield env
        finally:
            server.should_exit = True


@pytest.fixture
def bmc_factory(tmp_path):
    """``bmc_factory(name, **kw)`` starts a FirmwareBmc (plain HTTP), stopped at the end."""
    with ExitStack() as stack:

        def make(name: str, **kw: Any) -> FirmwareBmc:
            kw.setdefault("tls", False)
            return stack.enter_context(FirmwareBmc(Path(tmp_path) / f"bmc-{name}", **kw))

        yield make
