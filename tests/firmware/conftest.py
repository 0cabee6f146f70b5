"""Fixtures of the firmware-campaign tests: the server suite's server on a loopback
socket (so a BMC can download an image from it), on SQLite and PostgreSQL; and test
BMCs (:class:`tests.support.firmware_bmc.FirmwareBmc`)."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.server.conftest import (  # noqa: F401 - the server suite's fixtures, shared
    Env,
    database_url,
    pg_databases,
    socket_env,
    test_registry,
)
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
def settings_overrides(fw_settings) -> dict[str, Any]:
    return {"firmware": {"interval_s": 0.2}, "hold": {"enabled": False}, **fw_settings}


@pytest.fixture
async def fw(socket_env, monkeypatch):  # noqa: F811
    """The server on a loopback socket (``socket_env``), every plugin installed; BMCs
    download images from it."""
    monkeypatch.setenv(BMC_PW_ENV, "s3cret")  # FirmwareBmc's password
    socket_env.rt.settings.firmware.image_base_url = str(socket_env.client.base_url)
    env = FwEnv(socket_env.app, socket_env.client, socket_env.token)
    env.bmcs = []
    return env


@pytest.fixture
def bmc_factory(tmp_path):
    """``bmc_factory(name, **kw)`` starts a FirmwareBmc (plain HTTP), stopped at the end."""
    with ExitStack() as stack:

        def make(name: str, **kw: Any) -> FirmwareBmc:
            kw.setdefault("tls", False)
            return stack.enter_context(FirmwareBmc(Path(tmp_path) / f"bmc-{name}", **kw))

        yield make
