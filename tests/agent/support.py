"""Helpers of the connected-mode tests: a real server that knows the chatter plugin,
agent options for fast tests, a TCP proxy that can cut the network, DB counts."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from tests.support.server import REPO, ServerProcess
from vetting_agent.session import AgentOptions
from vetting_agent.sidecar import HwmonSource

from .test_agent_units import _fake_hwmon

PLUGIN_MODULE = "tests.agent.chatter_plugin"


def plugin_path(tmp: Path) -> Path:
    """A directory that, on ``sys.path``, makes the chatter plugin an installed
    distribution with a ``vetting`` entry point — found by the server's (and the agent
    CLI's) normal entry-point loading, the way any third-party plugin is."""
    root = tmp / "plugin-path"
    dist = root / "vetting_agent_test_chatter-0.1.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vetting-agent-test-chatter\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[vetting]\nagent-chatter = {PLUGIN_MODULE}\n")
    return root


def plugin_env(tmp: Path) -> dict[str, str]:
    path = [str(plugin_path(tmp)), str(REPO)]
    if os.environ.get("PYTHONPATH"):
        path.append(os.environ["PYTHONPATH"])
    return {"PYTHONPATH": os.pathsep.join(path)}


def make_server(tmp: Path, *, interval: float = 0.5, timeout: float = 15.0, hold: bool = True, **settings: Any) -> ServerProcess:
    merged = {"timeouts": {"heartbeat_interval_s": interval, "heartbeat_timeout_s": timeout}, "hold": {"enabled": hold}}
    for k, v in settings.items():
        merged.setdefault(k, {}).update(v)
    return ServerProcess(tmp / "server", settings=merged, env=plugin_env(tmp))


def agent_options(tmp: Path, **kw: Any) -> AgentOptions:
    hw = tmp / "hwmon"
    if not hw.exists():
        _fake_hwmon(hw)
    defaults: dict[str, Any] = dict(
        spool_dir=tmp / "spool",
        authorized_keys=tmp / "root-ssh" / "authorized_keys",
        backoff_initial_s=0.1,
        backoff_cap_s=1.0,
        startup_timeout_s=30.0,
        drain_timeout_s=60.0,
        final_wait_s=20.0,
        http_timeout_s=5.0,
        sidecar_sources=[HwmonSource(hw)],
        sensor_interval_s=0.2,
        flush_interval_s=0.2,
    )
    defaults.update(kw)
    return AgentOptions(**defaults)


def db_counts(srv: ServerProcess, run_id: int) -> dict[str, int]:
    assert srv.db_path is not None
    with sqlite3.connect(srv.db_path) as conn:
        return {
            "log": conn.execute("SELECT count(*) FROM log_lines WHERE run_id=?", (run_id,)).fetchone()[0],
            "sensor": conn.execute("SELECT count(*) FROM measurements WHERE run_id=?", (run_id,)).fetchone()[0],
            "log_batches": conn.execute(
                "SELECT count(*) FROM batches WHERE run_id=? AND stream='log'", (run_id,)
            ).fetchone()[0],
        }


class CuttableProxy:
    """A loopback TCP proxy in front of the server. ``cut()`` resets every open
    connection and refuses new ones (the link is down); ``heal()`` restores it."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.down = False
        self._scopes: set[anyio.CancelScope] = set()
        self.refused = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        task_status.started()
        await listener.serve(self._handle)

    async def _handle(self, client: anyio.abc.SocketStream) -> None:
        async with client:
            if self.down:
                self.refused += 1
                return
            try:
                upstream = await anyio.connect_tcp("127.0.0.1", self.target_port)
            except OSError:
                return
            async with upstream:
                with anyio.CancelScope() as scope:
                    self._scopes.add(scope)
                    try:
                        async with anyio.create_task_group() as tg:
                            tg.start_soon(self._pump, client, upstream, tg.cancel_scope)
                            tg.start_soon(self._pump, upstream, client, tg.cancel_scope)
                    finally:
                        self._scopes.discard(scope)

    @staticmethod
    async def _pump(src: anyio.abc.SocketStream, dst: anyio.abc.SocketStream, scope: anyio.CancelScope) -> None:
        try:
            async for chunk in src:
                await dst.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        scope.cancel()

    def cut(self) -> None:
        self.down = True
        for scope in list(self._scopes):
            scope.cancel()

    def heal(self) -> None:
        self.down = False
