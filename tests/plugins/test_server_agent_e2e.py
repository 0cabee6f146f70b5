"""The example plugin in a real orchestrated run: a real ``vetting serve`` (SQLite), a
real ``vetting-agent connect``, the real ``memtester``, a Gotify receiver on loopback.

The agent runs under an mlock limit without CAP_IPC_LOCK, so memtester really does
what it does on a misconfigured live image: it shrinks its buffer to 64 KiB, says
``ok`` to every test and exits 0. The plugin's stage reports ``passed``; the server
judges the stage's ``coverage_pct`` with the plugin's ``between`` operator, fails the
stage, and routes the StageFailed event to the plugin's ``gotify`` notifier.
"""

import json
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support.server import ServerProcess

from .distributions import BIN, env_with


@pytest.fixture
def gotify():
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            received.append((self.path, self.headers.get("X-Gotify-Key"), json.loads(body)))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", received
    server.shutdown()
    server.server_close()


def test_agent_runs_the_plugin_stage_server_judges_with_its_operator_and_notifies(tmp_path, gotify):
    assert shutil.which("setpriv") and shutil.which("memtester", path="/usr/sbin:/usr/bin"), (
        "needs util-linux setpriv and memtester (apt-get install memtester)"
    )
    url, received = gotify
    settings = {
        "hold": {"enabled": False},  # never install an SSH key on the test machine
        "notifications": {
            "targets": [{"name": "phone", "kind": "gotify", "config": {"url": url, "token": "T0k"}}],
            "routes": [{"targets": ["phone"], "events": ["StageFailed"], "severities": ["critical"]}],
        },
    }
    with ServerProcess(tmp_path / "server", settings=settings, env=env_with()) as srv:
        # the host's expected spec carries per-host stage parameters
        host = srv.create_host("box1", "02:00:00:00:00:11", spec_yaml="params:\n  Memtester: {mib: 4}\n")
        run_id, token = srv.start_run(host["id"], profile="quick-memtest", stages=["Memtester"])
        agent = subprocess.Popen(
            ["setpriv", "--bounding-set=-ipc_lock", "--inh-caps=-ipc_lock", "sh", "-c",
             'ulimit -l 64 && exec "$0" "$@"', str(BIN / "vetting-agent"), "connect",
             "--server", srv.base_url, "--run", str(run_id)],
            env=env_with(VETTING_AGENT_TOKEN=token, VETTING_AGENT_SPOOL=str(tmp_path / "spool")),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        )
        try:
            detail = srv.wait_state(run_id, "Failed", "FailedHolding", "Completed", timeout=60)
            deadline = time.monotonic() + 15
            while not received and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            if agent.poll() is None:
                agent.kill()
            agent_out = agent.communicate(timeout=10)[0]

        # the agent ran the plugin's stage with the host's parameters, and it said passed
        assert "stage=Memtester verdict=passed" in agent_out, agent_out[-3000:]
        [stage] = detail["stages"]
        assert stage["name"] == "Memtester"
        # the server judged coverage_pct with the plugin's `between` operator and failed it
        assert detail["run"]["state"] == "Failed", detail["run"]
        assert stage["state"] == "failed"
        assert "memtester coverage_pct = 1.5625" in stage["reason"]
        rules = {r["id"]: r for r in detail["thresholds"]}
        [breach] = detail["breaches"]
        assert (breach["kind"], breach["key"], breach["observed"]) == ("memtester", "coverage_pct", 1.5625)
        rule = rules[breach["threshold_id"]]
        assert (rule["op"], rule["threshold"], rule["severity"]) == ("between", "99..100", "critical")
        # the other plugin rules judged and passed: no memory errors, 4 MiB requested
        series = {(s["kind"], s["key"]) for s in detail["series"]}
        assert {("memtester", "errors"), ("memtester", "tested_mib")} <= series

        # the StageFailed event went to the plugin's notifier
        assert received, f"no notification reached the gotify receiver\n{srv.log_tail()}"
        path, key, body = received[0]
        assert path == "/message" and key == "T0k"
        assert body["title"] == "[Vetting] StageFailed: box1 / Memtester"
        assert body["priority"] == 8 and f"run #{run_id}" in body["message"]


def test_an_agent_without_the_plugin_fails_that_stage_and_carries_on(tmp_path):
    """The server plans the plugin's stage; the agent has it blocked
    (VETTING_DISABLE_PLUGINS=example): the stage fails with the reason, nothing crashes."""
    with ServerProcess(tmp_path / "server", settings={"hold": {"enabled": False}}, env=env_with()) as srv:
        host = srv.create_host("box2", "02:00:00:00:00:12", spec_yaml="params:\n  Memtester: {mib: 4}\n")
        run_id, token = srv.start_run(host["id"], profile="quick-memtest", stages=["InventoryCheck", "Memtester"])
        agent = subprocess.run(
            [str(BIN / "vetting-agent"), "connect", "--server", srv.base_url, "--run", str(run_id)],
            env=env_with(VETTING_AGENT_TOKEN=token, VETTING_AGENT_SPOOL=str(tmp_path / "spool"),
                         VETTING_DISABLE_PLUGINS="example"),
            capture_output=True, text=True, cwd=tmp_path, timeout=60,
        )
        detail = srv.wait_state(run_id, "Failed", "FailedHolding", "Completed", timeout=30)
        stages = {s["name"]: s for s in detail["stages"]}
        assert stages["InventoryCheck"]["state"] == "passed", agent.stdout + agent.stderr
        assert stages["Memtester"]["state"] == "failed"
        assert "not installed" in stages["Memtester"]["reason"], stages["Memtester"]
        assert detail["run"]["state"] == "Failed"
        # the agent's inventory lacks the blocked plugin's probe sections
        assert "kernel" not in (detail["inventory"] or {})
