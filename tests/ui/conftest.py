"""Fixtures of the browser tests: a real ``vetting serve``, real agents, Debian's chromium.

- ``server``: one ``vetting serve`` process (SQLite) per module, with two test plugins
  installed through a ``vetting`` entry point on its ``PYTHONPATH`` (the agent tests'
  chatter stages and :mod:`.ui_plugin`), heartbeats every 0.5 s, and an operator
  ``alice`` with a password (``vetting admin create``).
- ``browser``: Playwright for Python driving ``/usr/bin/chromium`` (Debian's package;
  Playwright's own browser download is not used), headless, no network of its own.
- ``ui``: a fresh browser context per test that records every request; a request to
  anything but the server fails the test (the UI serves all its assets itself).
  ``ui.shot(name)`` saves a screenshot under ``$VETTING_SCREENSHOTS`` (default: a
  directory in the pytest tmp dir, printed at the end of the session).
- ``agent``: starts real ``vetting-agent`` processes (connect or host mode) and stops
  them at the end of the test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import REPO, ServerProcess

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PASSWORD = "correct horse battery"
LAPTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}


def plugin_env(tmp: Path) -> dict[str, str]:
    """``PYTHONPATH`` on which the two test plugins are an installed distribution."""
    dist = tmp / "plugin-path" / "vetting_ui_test_plugins-0.1.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vetting-ui-test-plugins\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[vetting]\nagent-chatter = tests.agent.chatter_plugin\nui-test = tests.ui.ui_plugin\n")
    path = [str(dist.parent), str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {"PYTHONPATH": os.pathsep.join(path)}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("ui-server")
    settings = {
        "timeouts": {"heartbeat_interval_s": 0.5, "heartbeat_timeout_s": 30},
        "hold": {"enabled": True, "key_ttl_hours": 2},
    }
    with ServerProcess(tmp / "server", settings=settings, env=plugin_env(tmp)) as srv:
        srv.cli("admin", "create", "alice", "--password-stdin", input=PASSWORD + "\n", check=True)
        srv.plugin_env = plugin_env(tmp)  # type: ignore[attr-defined]
        yield srv


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = Path(os.environ.get("VETTING_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    d.mkdir(parents=True, exist_ok=True)
    yield d
    print(f"\nscreenshots: {d}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Module-scoped: Playwright's sync API runs an event loop of its own while it is open,
    and the anyio tests of another module need theirs."""
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install chromium (listed in .ci/debian-packages.txt)"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Ui:
    """One browser context on the test server, and what the tests do with it."""

    def __init__(self, browser: Any, server: ServerProcess, shots: Path, viewport: dict[str, int] = LAPTOP) -> None:
        self.server = server
        self.base = server.base_url
        self.shots = shots
        self.context = browser.new_context(base_url=self.base, viewport=viewport, accept_downloads=True)
        self.context.set_default_timeout(20_000)
        self.requests: list[str] = []
        self.context.on("request", lambda r: self.requests.append(r.url))
        self.page = self.context.new_page()

    def external(self) -> list[str]:
        return [u for u in self.requests if not u.startswith(self.base + "/") and not u.startswith(("data:", "about:"))]

    def shot(self, name: str, page: Any = None, full: bool = True) -> Path:
        path = self.shots / f"{name}.png"
        (page or self.page).screenshot(path=str(path), full_page=full)
        return path

    def login(self, user: str = "alice", password: str = PASSWORD) -> None:
        self.page.goto("/login")
        self.page.get_by_label("User name").fill(user)
        self.page.get_by_label("Password").fill(password)
        self.page.get_by_role("button", name="Log in").click()
        self.page.wait_for_url(re.compile(r".*/$"))

    def csrf(self) -> str:
        return json.loads(self.page.locator("body").get_attribute("hx-headers"))["X-CSRF-Token"]

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def ui(browser: Any, server: ServerProcess, screenshot_dir: Path) -> Iterator[Ui]:
    u = Ui(browser, server, screenshot_dir)
    try:
        yield u
        assert not u.external(), f"pages requested URLs outside the server: {u.external()}"
    finally:
        u.close()


class Agents:
    """Real ``vetting-agent`` processes for the test server (stopped at the end)."""

    def __init__(self, server: ServerProcess, tmp: Path) -> None:
        self.server, self.tmp = server, tmp
        self.procs: list[tuple[subprocess.Popen[str], Path]] = []

    def _start(self, args: list[str], token: str, name: str) -> subprocess.Popen[str]:
        log = self.tmp / f"agent-{name}.log"
        environ = {**os.environ, **self.server.plugin_env, "VETTING_AGENT_TOKEN": token,  # type: ignore[attr-defined]
                   "VETTING_AGENT_SPOOL": str(self.tmp / f"spool-{name}")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "vetting_agent.cli", *args, "--server", self.server.base_url,
             "--spool-dir", str(self.tmp / f"spool-{name}"), "--authorized-keys", str(self.tmp / f"keys-{name}"),
             "--no-sensors", "--final-wait", "5", "--backoff-cap", "1"],
            env=environ, stdout=open(log, "w"), stderr=subprocess.STDOUT, text=True, cwd=self.tmp,
        )
        self.procs.append((proc, log))
        return proc

    def connect(self, run_id: int, token: str, hold_ip: str = "192.0.2.7") -> subprocess.Popen[str]:
        return self._start(["connect", "--run", str(run_id), "--hold-ip", hold_ip], token, f"run{run_id}")

    def host(self, token: str, name: str) -> subprocess.Popen[str]:
        return self._start(["host"], token, f"host-{name}")

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for _, log in self.procs if log.exists())

    def stop(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc, _ in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def agents(server: ServerProcess, tmp_path: Path) -> Iterator[Agents]:
    a = Agents(server, tmp_path)
    try:
        yield a
    finally:
        a.stop()


def ext4_image(path: Path, size_mib: int = 8) -> Path:
    """A file holding a real ext4 filesystem (what the wipe probe must find)."""
    mkfs = shutil.which("mkfs.ext4") or "/usr/sbin/mkfs.ext4"
    with open(path, "wb") as f:
        f.truncate(size_mib << 20)
    subprocess.run([mkfs, "-q", "-F", "-L", "vetting-test", str(path)], check=True, capture_output=True)
    return path


# the in-process server of the server tests (SQLite and PostgreSQL), for tests/ui/test_ui_server.py
from tests.server.conftest import database_url, env, pg_databases, settings_overrides, test_registry  # noqa: E402,F401
