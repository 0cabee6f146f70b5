"""Real server processes: the CLI, the SSE stream, restart and kill -9 (both engines)."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import time

import httpx

from tests.support.server import ServerProcess

TS = "2026-11-23T01:00:00Z"


def _agent_start(srv, run_id, tok):
    srv.agent("POST", f"/api/v1/runs/{run_id}/hello", tok, json={"agent_version": "t", "hostname": "n1"}).raise_for_status()
    r = srv.agent("POST", f"/api/v1/runs/{run_id}/claim", tok, json={"agent_version": "t", "hostname": "n1"})
    r.raise_for_status()
    return r.json()


def test_cli_login_sse_watch_and_report(tmp_path, database_url):
    with ServerProcess(tmp_path / "srv", database_url=database_url) as srv:
        # admin account: password from stdin, then log in over the API
        cp = srv.cli("admin", "create", "alice", "--password-stdin", input="correct horse battery\n", check=True)
        assert "alice: created" in cp.stdout
        r = httpx.post(f"{srv.base_url}/api/v1/auth/token", json={"username": "alice", "password": "wrong"})
        assert r.status_code == 401 and r.json()["detail"]
        r = httpx.post(f"{srv.base_url}/api/v1/auth/token", json={"username": "alice", "password": "correct horse battery"})
        assert r.status_code == 201
        alice = r.json()["token"]
        cp = srv.cli("admin", "create", "bob", "--password-stdin", input="short\n")
        assert cp.returncode != 0 and "at least 8" in cp.stderr

        spec = tmp_path / "spec.yaml"
        spec.write_text("cpu:\n  threads: 2\n")
        cp = srv.cli("host", "add", "n1", "--mac", "AA:BB:CC:00:00:01", "--spec", str(spec), "--token", alice, check=True)
        assert "aa:bb:cc:00:00:01" in cp.stdout and "vh_" in cp.stdout
        cp = srv.cli("host", "list", check=True)
        assert "n1" in cp.stdout and "manual" in cp.stdout
        cp = srv.cli("host", "show", "n1", check=True)
        assert '"threads: 2' in cp.stdout or "threads: 2" in cp.stdout
        cp = srv.cli("run", "start", "n1", "--non-destructive", "--stage", "InventoryCheck", "--stage", "SpecValidate", check=True)
        run_id = int(cp.stdout.split()[1])
        tok = cp.stdout.split("agent token (shown once): ")[1].split()[0]

        watch = subprocess.Popen(
            [sys.executable, "-m", "vetting_server", "--config", str(srv.config_path), "run", "watch", str(run_id)],
            env={**srv.env, "VETTING_SERVER": srv.base_url, "VETTING_TOKEN": srv.token},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            time.sleep(1.5)
            claim = _agent_start(srv, run_id, tok)
            assert [s["name"] for s in claim["stages"]] == ["InventoryCheck", "SpecValidate"]
            assert claim["expected_spec"] == {"cpu": {"threads": 2}}
            srv.agent("POST", f"/api/v1/runs/{run_id}/heartbeat", tok, json={"stage": "InventoryCheck", "progress": 0.5, "message": "probing"})
            time.sleep(0.5)
            r = srv.agent("POST", f"/api/v1/runs/{run_id}/result", tok, json={
                "stage": "InventoryCheck", "verdict": "passed",
                "inventory": {"cpu": {"model": "Test CPU", "threads": 2, "cores": 1, "sockets": 1}}})
            assert r.status_code == 200, r.text
            out, err = watch.communicate(timeout=30)
        finally:
            watch.kill()
        assert watch.returncode == 0, err
        # the live line: the local mode's, with the stage's place, percent, elapsed and ETA
        assert re.search(r"^\[1/2\] InventoryCheck\s+50%  elapsed \d+s  ETA \d+s  probing$", out, re.M), out
        assert "stage SpecValidate passed" in out
        assert "run completed" in out or "Completed" in out

        d = srv.wait_state(run_id, "Completed", timeout=20)
        assert {s["name"]: s["state"] for s in d["stages"]} == {"InventoryCheck": "passed", "SpecValidate": "passed"}
        r = srv.api("GET", f"/api/v1/runs/{run_id}/report/json")
        assert r.status_code == 200 and str(run_id) in r.text
        cp = srv.cli("run", "show", str(run_id), check=True)
        assert "Completed" in cp.stdout and "SpecValidate" in cp.stdout
        # the OCPTV export names the real command that started the run, and where from
        ocptv = srv.api("GET", f"/api/v1/runs/{run_id}/report/ocptv").text.splitlines()
        command = json.loads(ocptv[1])["testRunArtifact"]["testRunStart"]["commandLine"]
        assert command == (f"vetting --config {srv.config_path} run start n1 --non-destructive --stage InventoryCheck "
                           "--stage SpecValidate  # POST /api/v1/runs by admin from 127.0.0.1")
        assert f"started by: {command}" in cp.stdout
        cp = srv.cli("run", "list", "--state", "Completed", check=True)
        assert "n1" in cp.stdout

        # SSE resume: everything after a given event id, from the stored log
        ev = srv.api("GET", f"/api/v1/runs/{run_id}/events").json()
        mid = ev[len(ev) // 2]["id"]
        seen = []
        with httpx.stream("GET", f"{srv.base_url}/api/v1/events/stream", params={"run_id": run_id},
                          headers={"Authorization": f"Bearer {srv.token}", "Last-Event-ID": str(mid)}, timeout=10) as s:
            for line in s.iter_lines():
                if line.startswith("id:"):
                    seen.append(int(line[3:]))
                if seen and seen[-1] == ev[-1]["id"]:
                    break
        assert seen == [e["id"] for e in ev if e["id"] > mid]
        audit = srv.api("GET", "/api/v1/events").json()
        kinds = {e["kind"] for e in audit}
        assert {"audit.login", "audit.login_failed", "audit.host_created", "audit.run_started", "audit.token_used"} <= kinds
        host_ev = srv.api("GET", f"/api/v1/hosts/{d['run']['host_id']}/events").json()
        assert any(e["kind"] == "audit.host_created" and e["actor"] == "alice" for e in host_ev)


def test_restart_resumes_and_kill9_loses_nothing(tmp_path, database_url):
    srv = ServerProcess(tmp_path / "srv", database_url=database_url,
                        settings={"timeouts": {"heartbeat_timeout_s": 3, "heartbeat_interval_s": 1}})
    with srv:
        host = srv.create_host("n1", "aa:bb:cc:00:00:01")
        run_id, tok = srv.start_run(host["id"], stages=["InventoryCheck", "CPUStress"])
        _agent_start(srv, run_id, tok)
        for seq in range(1, 6):
            r = srv.agent("POST", f"/api/v1/runs/{run_id}/sensor", tok, json={
                "seq": seq, "samples": [[TS, "InventoryCheck", "temp", f"cpu/{i}", 40.0 + i, "C", None] for i in range(100)]})
            assert r.json()["stored"] == 100
        srv.kill()  # kill -9: acknowledged batches must survive
        time.sleep(4)  # longer than the heartbeat timeout while the server is down
        srv.start()
        hb = srv.agent("POST", f"/api/v1/runs/{run_id}/heartbeat", tok, json={"stage": "InventoryCheck"})
        assert hb.status_code == 200 and hb.json()["cmd"] == "continue"
        # the agent resends batch 5 (not sure it was stored; the same bytes) and goes on with 6
        r = srv.agent("POST", f"/api/v1/runs/{run_id}/sensor", tok, json={
            "seq": 5, "samples": [[TS, "InventoryCheck", "temp", f"cpu/{i}", 40.0 + i, "C", None] for i in range(100)]})
        assert r.json()["duplicate"] is True
        claim = srv.agent("POST", f"/api/v1/runs/{run_id}/claim", tok, json={"agent_version": "t", "hostname": "n1"}).json()
        assert claim["sensor_seq"] == 5 and claim["stages"][0]["state"] == "running"
        r = srv.agent("POST", f"/api/v1/runs/{run_id}/result", tok, json={"stage": "InventoryCheck", "verdict": "passed", "sensor_seq": 5})
        assert r.json()["next_stage"] == "CPUStress"
        d = srv.run(run_id)
        assert d["run"]["state"] == "Running" and d["measurement_count"] == 500
        # now the agent really goes away: AgentLost after the timeout, with the reason
        d = srv.wait_state(run_id, "Failed", timeout=15)
        assert d["run"]["reason"].startswith("agent lost") and d["run"]["failed_stage"] == "CPUStress"


def test_db_migrate_and_token_cli(tmp_path):
    srv = ServerProcess(tmp_path / "srv")
    cp = srv.cli("db", "migrate")
    from vetting_server.db.migrate import available

    versions = [v for v, _ in available()]
    assert cp.returncode == 0 and f"applied {len(versions)} migration(s): {', '.join(versions)}" in cp.stdout
    cp = srv.cli("db", "migrate")
    assert "applied 0 migration(s)" in cp.stdout
    cp = srv.cli("token", "create", "--user", "ops")
    assert cp.returncode == 0 and cp.stdout.strip().startswith("vo_")
    srv.cli("admin", "create", "ops", "--password-stdin", input="correct horse battery\n", check=True)
    with sqlite3.connect(srv.db_path) as db:  # the CLI's changes are in the audit log
        audit = db.execute("SELECT kind, message, actor FROM events WHERE kind LIKE 'audit.%' ORDER BY id").fetchall()
    assert audit == [("audit.token_created", "API token 'cli' created for ops from the command line", "ops"),
                     ("audit.admin", "operator ops password changed from the command line", "ops")]
    cp = srv.cli("plugins", "list")
    assert cp.returncode == 0 and "boot providers: wol, manual, agent" in cp.stdout
    cp = srv.cli("host", "list", "--token", "vo_nope", "--server", "http://127.0.0.1:1")
    assert cp.returncode != 0 and "cannot reach" in cp.stderr


def test_plugins_list_does_not_import_the_server_stack():
    code = (
        "import sys, io, contextlib\n"
        "from vetting_server.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out: rc = main(['plugins', 'list'])\n"
        "assert rc == 0 and 'core' in out.getvalue()\n"
        "print(sorted(m for m in ('litestar', 'piccolo', 'asyncpg', 'uvicorn') if m in sys.modules))\n"
    )
    cp = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.strip() == "[]"


def test_serve_with_an_unreachable_database_fails_clearly(tmp_path):
    cfg = tmp_path / "v.yaml"
    cfg.write_text("database:\n  url: postgresql://postgres:hunter2@127.0.0.1:1/nope\n")
    cp = subprocess.run([sys.executable, "-m", "vetting_server", "--config", str(cfg), "serve"],
                        capture_output=True, text=True, timeout=60)
    assert cp.returncode == 1
    assert "cannot open the database postgresql://postgres:***@127.0.0.1:1/nope" in cp.stderr
    assert "hunter2" not in cp.stderr and "Traceback" not in cp.stderr
