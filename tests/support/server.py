"""A real orchestrator server process for tests (agent, plugin, server and e2e tests).

Usage::

    from tests.support.server import ServerProcess

    with ServerProcess(tmp_path, settings={"timeouts": {"heartbeat_timeout_s": 5}}) as srv:
        host = srv.create_host("node1", "aa:bb:cc:dd:ee:01")          # manual boot
        run_id, agent_token = srv.start_run(host["id"], stages=["InventoryCheck"])
        # point an agent at srv.base_url with run_id/agent_token ...
        srv.wait_state(run_id, "Completed", timeout=60)
        srv.kill(); srv.start()                                       # kill -9 and restart
        detail = srv.api("GET", f"/api/v1/runs/{run_id}").json()

Stable API (other engineers' tests rely on it; add, never rename):

- ``ServerProcess(tmp_dir, *, database_url=None, settings=None, env=None, port=None)``:
  writes ``tmp_dir/vetting.yaml`` (SQLite file ``tmp_dir/vetting.db`` unless
  ``database_url`` is given; ``data_dir`` ``tmp_dir/var``) merged with ``settings``
  (nested dict of config sections). ``env`` adds environment variables for the
  server process (e.g. ``VETTING_DISABLE_PLUGINS``).
- ``start()`` starts ``python -m vetting_server serve`` on a free loopback port
  (the same port across restarts), waits for ``/healthz``, and on the first start
  creates an operator token with ``vetting token create``. ``stop()`` (SIGTERM,
  graceful), ``kill()`` (SIGKILL), ``restart()`` (stop + start).
- ``base_url``, ``port``, ``token`` (operator), ``config_path``, ``db_path``
  (SQLite only), ``database_url``, ``data_dir``, ``log_path`` (server stdout+stderr).
- ``api(method, path, **httpx_kwargs) -> httpx.Response`` with the operator token.
- ``agent(method, path, token, **kw) -> httpx.Response`` with a run/host token.
- ``create_host(name, mac, spec_yaml="", boot_provider="manual", boot_config=None)
  -> dict`` (the host, incl. ``agent_token`` for host mode).
- ``start_run(host_id, profile="quick", non_destructive=True, stages=None)
  -> (run_id, agent_token)``.
- ``run(run_id) -> dict`` (run detail), ``wait_state(run_id, *states, timeout=30)
  -> dict`` (the run detail once its state is one of ``states``).
- ``cli(*args, input=None) -> subprocess.CompletedProcess`` runs ``vetting`` with this
  server's config, URL and token.
- Context manager: ``with ServerProcess(...) as srv`` starts and finally stops it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


class ServerProcess:
    def __init__(
        self,
        tmp_dir: str | os.PathLike[str],
        *,
        database_url: str | None = None,
        settings: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.dir = Path(tmp_dir).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.db_path: Path | None = None
        if database_url is None:
            self.db_path = self.dir / "vetting.db"
            database_url = f"sqlite:///{self.db_path}"
        self.database_url = database_url
        self.data_dir = self.dir / "var"
        self.config_path = self.dir / "vetting.yaml"
        self.log_path = self.dir / "server.log"
        base = {
            "server": {"host": "127.0.0.1", "port": self.port, "data_dir": str(self.data_dir), "public_url": self.base_url},
            "database": {"url": database_url},
            "dispatcher": {"interval_s": 0.5},
            "logging": {"level": "info"},
        }
        self.settings = _merge(base, settings or {})
        self.config_path.write_text(yaml.safe_dump(self.settings))
        self.env = {**os.environ, **(env or {})}
        for k in [k for k in self.env if k.startswith("VETTING__")]:
            del self.env[k]  # the test's config file is the whole truth
        self.proc: subprocess.Popen[bytes] | None = None
        self.token: str | None = None
        self._http: httpx.Client | None = None
        self._log: Any = None

    # ------------------------------------------------------------------ process
    def start(self, timeout: float = 30.0) -> ServerProcess:
        if self.proc is not None and self.proc.poll() is None:
            return self
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vetting_server", "--config", str(self.config_path), "serve"],
            cwd=self.dir, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vetting serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"vetting serve did not become ready in {timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)
        if self.token is None:
            out = self.cli("token", "create", "--user", "admin", "--name", "tests", check=True)
            self.token = out.stdout.strip().splitlines()[-1]
        if self._http is None:
            self._http = httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close_log()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close_log()

    def restart(self) -> ServerProcess:
        self.stop()
        return self.start()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def close(self) -> None:
        self.stop()
        if self._http is not None:
            self._http.close()
            self._http = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    # ------------------------------------------------------------------ HTTP
    def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        assert self._http is not None, "start() the server first"
        return self._http.request(method, path, **kw)

    def agent(self, method: str, path: str, token: str | None, **kw: Any) -> httpx.Response:
        headers = dict(kw.pop("headers", {}) or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return httpx.request(method, f"{self.base_url}{path}", headers=headers, timeout=kw.pop("timeout", 30), **kw)

    def _ok(self, r: httpx.Response) -> Any:
        if r.status_code >= 400:
            raise AssertionError(f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text}")
        return r.json()

    def create_host(
        self, name: str, mac: str, spec_yaml: str = "", boot_provider: str = "manual",
        boot_config: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        return self._ok(self.api("POST", "/api/v1/hosts", json={
            "name": name, "mac": mac, "expected_spec_yaml": spec_yaml, "boot_provider": boot_provider,
            "boot_config": boot_config or {},
        }))

    def start_run(
        self, host_id: int, profile: str = "quick", non_destructive: bool = True, stages: list[str] | None = None
    ) -> tuple[int, str]:
        body: dict[str, Any] = {"host_id": host_id, "profile": profile, "non_destructive": non_destructive}
        if stages is not None:
            body["stages"] = stages
        r = self._ok(self.api("POST", "/api/v1/runs", json=body))
        return int(r["run"]["id"]), r["agent_token"]

    def run(self, run_id: int) -> dict[str, Any]:
        return self._ok(self.api("GET", f"/api/v1/runs/{run_id}"))

    def wait_state(self, run_id: int, *states: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            d = self.run(run_id)
            if d["run"]["state"] in states:
                return d
            if time.monotonic() > deadline:
                raise AssertionError(f"run {run_id} is {d['run']['state']} after {timeout}s, wanted {states}")
            time.sleep(0.1)

    def cli(self, *args: str, input: str | None = None, check: bool = False) -> subprocess.CompletedProcess[str]:
        env = {**self.env, "VETTING_SERVER": self.base_url}
        if self.token:
            env["VETTING_TOKEN"] = self.token
        cp = subprocess.run(
            [sys.executable, "-m", "vetting_server", "--config", str(self.config_path), *args],
            cwd=self.dir, env=env, input=input, capture_output=True, text=True, timeout=120,
        )
        if check and cp.returncode != 0:
            raise AssertionError(f"vetting {' '.join(args)} exited {cp.returncode}:\n{cp.stdout}\n{cp.stderr}")
        return cp


__all__ = ["REPO", "ServerProcess", "free_port"]
