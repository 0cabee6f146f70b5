"""Dispatcher, boot providers, timers, host mode, notifications, janitor (both engines)."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from datetime import timedelta

import anyio
import pytest

from .conftest import Env, create_operator_token, make_settings, serve_in_process

pytestmark = pytest.mark.anyio


async def _env(database_url, tmp_path, registry, **sections):
    from vetting_server.app import create_app

    app = create_app(make_settings(database_url, tmp_path, **sections), registry=registry)
    return app


async def test_wol_dispatch_sends_a_real_magic_packet(database_url, tmp_path, test_registry):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    port = sock.getsockname()[1]
    app = await _env(database_url, tmp_path, test_registry)
    async with serve_in_process(app) as client:
        env = Env(app, client, await create_operator_token(app.state.rt))
        host = await env.create_host("wol1", "10:20:30:40:50:60", boot_provider="wol",
                                     boot_config={"broadcast_ip": "127.0.0.1", "port": port, "repeat": 1})
        run_id, _ = await env.start_run(host["id"])
        d = await env.wait_state(run_id, "Booting")
        data = await anyio.to_thread.run_sync(sock.recv, 1024)
        assert data == b"\xff" * 6 + bytes.fromhex("102030405060") * 16
        assert "Wake-on-LAN" in d["run"]["boot_message"]
    sock.close()


async def test_boot_config_validated_on_write(env):
    r = await env.op("POST", "/api/v1/hosts", json={"name": "w", "mac": "10:20:30:40:50:61", "boot_provider": "wol",
                                                    "boot_config": {"broadcast_ip": "not-an-ip"}})
    assert r.status_code == 422 and r.json()["extra"] == {"field": "boot_config"}
    r = await env.op("POST", "/api/v1/hosts", json={"name": "w", "mac": "10:20:30:40:50:61", "boot_provider": "teleport"})
    assert r.status_code == 422 and r.json()["extra"] == {"field": "boot_provider"}


async def test_concurrency_limit_and_boot_timeout(database_url, tmp_path, test_registry):
    app = await _env(database_url, tmp_path, test_registry, dispatcher={"concurrency": 1, "interval_s": 0.1},
                     timeouts={"boot_s": 1.0})
    async with serve_in_process(app) as client:
        env = Env(app, client, await create_operator_token(app.state.rt))
        h1 = await env.create_host("n1", "aa:bb:cc:00:00:01")
        h2 = await env.create_host("n2", "aa:bb:cc:00:00:02")
        r1, _ = await env.start_run(h1["id"])
        r2, _ = await env.start_run(h2["id"])
        await env.wait_state(r1, "Booting")
        await anyio.sleep(0.4)
        assert (await env.detail(r2))["run"]["state"] == "Queued"  # only one at a time
        d1 = await env.wait_state(r1, "Failed", timeout=10)
        assert "boot timeout" in d1["run"]["reason"]
        await env.wait_state(r2, "Booting", "Failed", timeout=5)  # the slot was freed


async def test_heartbeat_timeout_is_agent_lost(database_url, tmp_path, test_registry):
    app = await _env(database_url, tmp_path, test_registry, timeouts={"heartbeat_timeout_s": 1.5, "heartbeat_interval_s": 0.5})
    async with serve_in_process(app) as client:
        env = Env(app, client, await create_operator_token(app.state.rt))
        run_id, tok = await env.running()
        for _ in range(4):  # heartbeats keep it alive past the timeout
            hb = await env.agent("POST", f"/api/v1/runs/{run_id}/heartbeat", tok, json={"stage": "Alpha", "progress": 0.5})
            assert hb.json()["cmd"] == "continue"
            await anyio.sleep(0.6)
        assert (await env.detail(run_id))["run"]["state"] == "Running"
        d = await env.wait_state(run_id, "Failed", timeout=10)
        assert d["run"]["reason"].startswith("agent lost: no heartbeat")
        assert d["run"]["failed_stage"] == "Alpha"
        ev = (await env.op("GET", f"/api/v1/runs/{run_id}/events")).json()
        assert any(e["kind"] == "AgentLost" for e in ev)


async def test_stage_timeout(database_url, tmp_path, test_registry):
    app = await _env(database_url, tmp_path, test_registry, timeouts={"stage_grace_s": 0.0})
    async with serve_in_process(app) as client:
        env = Env(app, client, await create_operator_token(app.state.rt))
        host = await env.create_host()
        r = await env.op("POST", "/api/v1/runs", json={"host_id": host["id"], "profile": "srvtest"})
        run_id, tok = r.json()["run"]["id"], r.json()["agent_token"]
        # shrink Alpha's timeout in the stored plan (it is immutable for the API, not for the test)
        async with app.state.rt.db.transaction() as tx:
            await tx.execute("UPDATE stages SET timeout_s = 1.0 WHERE run_id = $1 AND name = 'Alpha'", run_id)
        await env.agent("POST", f"/api/v1/runs/{run_id}/hello", tok, json={"agent_version": "t", "hostname": "n"})
        await env.agent("POST", f"/api/v1/runs/{run_id}/claim", tok, json={"agent_version": "t", "hostname": "n"})
        with anyio.fail_after(10):
            while True:
                await env.agent("POST", f"/api/v1/runs/{run_id}/heartbeat", tok, json={})
                d = await env.detail(run_id)
                if d["run"]["state"] == "Failed":
                    break
                await anyio.sleep(0.2)
        assert "exceeded its timeout" in d["run"]["reason"]


async def test_host_mode_pickup(env):
    host = await env.create_host("hm1", "aa:bb:cc:00:01:01", boot_provider="agent")
    htok = host["agent_token"]
    assert htok and htok.startswith("vh_")
    poll = {"hostname": "hm1", "agent_version": "t", "ip": "10.1.1.1"}
    r = await env.agent("POST", "/api/v1/agents/heartbeat", htok, json=poll)
    assert r.status_code == 200 and r.json()["cmd"] == "idle"
    r = await env.op("POST", "/api/v1/runs", json={"host_id": host["id"], "profile": "srvtest", "non_destructive": False})
    run = r.json()
    assert run["run"]["non_destructive"] is True  # forced for host mode
    old_token = run["agent_token"]
    r = (await env.agent("POST", "/api/v1/agents/heartbeat", htok, json=poll)).json()
    assert r["cmd"] == "run" and r["run_id"] == run["run"]["id"] and r["run_token"]
    tok = r["run_token"]
    busy = (await env.agent("POST", "/api/v1/agents/heartbeat", htok, json={**poll, "busy": True})).json()
    assert busy["cmd"] == "idle"
    rid = run["run"]["id"]
    r = await env.agent("POST", f"/api/v1/runs/{rid}/hello", old_token, json={"agent_version": "t", "hostname": "hm1"})
    assert r.status_code == 401  # the token shown at creation was replaced by the host-mode one
    r = await env.agent("POST", f"/api/v1/runs/{rid}/hello", tok, json={"agent_version": "t", "hostname": "hm1", "mode": "host"})
    assert r.status_code == 200
    claim = (await env.agent("POST", f"/api/v1/runs/{rid}/claim", tok, json={"agent_version": "t", "hostname": "hm1"})).json()
    assert claim["non_destructive"] is True and not any(s["destructive"] for s in claim["stages"])
    await env.rt.scheduler.flush_heartbeats()
    h = (await env.op("GET", f"/api/v1/hosts/{host['id']}")).json()
    assert h["last_seen_at"] and h["last_seen_ip"] == "10.1.1.1"
    # a failure in host mode does not ask for a hold (an installed machine)
    r = (await env.agent("POST", f"/api/v1/runs/{rid}/result", tok, json={"stage": "Alpha", "verdict": "failed"})).json()
    assert r["hold"] is False
    r = await env.agent("POST", "/api/v1/agents/heartbeat", tok, json=poll)
    assert r.status_code == 403  # a run token is not a host token


class _Receiver(http.server.BaseHTTPRequestHandler):
    got: list = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).got.append((self.path, dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *a):
        pass


async def test_notifications_delivered_and_recorded(database_url, tmp_path, test_registry):
    _Receiver.got = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/hook"
    app = await _env(database_url, tmp_path, test_registry, notifications={
        "targets": [{"name": "hook", "kind": "webhook", "config": {"url": url, "secret": "s" * 20}, "retries": 1}],
        "routes": [{"targets": ["hook"], "events": ["StageFailed", "RunCompleted"]}],
    })
    try:
        async with serve_in_process(app) as client:
            env = Env(app, client, await create_operator_token(app.state.rt))
            run_id, tok = await env.running()
            await env.agent("POST", f"/api/v1/runs/{run_id}/result", tok, json={"stage": "Alpha", "verdict": "failed", "reason": "fan"})
            with anyio.fail_after(10):
                while True:
                    ev = (await env.op("GET", f"/api/v1/runs/{run_id}/events")).json()
                    if any(e["kind"] == "notification" for e in ev):
                        break
                    await anyio.sleep(0.1)
        note = [e for e in ev if e["kind"] == "notification"][0]
        assert "delivered" in note["message"] and note["data"]["target"] == "hook"
        path, headers, body = _Receiver.got[0]
        payload = json.loads(body)
        assert path == "/hook" and "X-Vetting-Signature" in headers
        assert json.dumps(payload).count("StageFailed") >= 1
    finally:
        srv.shutdown()


class _Broken(http.server.BaseHTTPRequestHandler):
    """/down answers 500; /hang answers after 5 s (past the target's timeout)."""

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/hang":
            time.sleep(5)
        self.send_response(500 if self.path == "/down" else 204)
        self.end_headers()

    def log_message(self, *a):
        pass


async def test_failing_receivers_are_retried_recorded_and_never_hold_up_the_run(database_url, tmp_path, test_registry):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Broken)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    app = await _env(database_url, tmp_path, test_registry, notifications={
        "targets": [
            {"name": "down", "kind": "webhook", "config": {"url": f"{base}/down", "secret": "s" * 20}, "retries": 1},
            {"name": "hung", "kind": "webhook", "config": {"url": f"{base}/hang", "secret": "s" * 20}, "retries": 1,
             "timeout_s": 2.0},
        ],
        "routes": [{"targets": ["down", "hung"], "events": ["StageFailed"]}],
    })
    try:
        async with serve_in_process(app) as client:
            env = Env(app, client, await create_operator_token(app.state.rt))
            run_id, tok = await env.running()
            started = time.monotonic()
            r = await env.agent("POST", f"/api/v1/runs/{run_id}/result", tok,
                                json={"stage": "Alpha", "verdict": "failed", "reason": "fan"})
            assert r.status_code == 200 and r.json()["next_state"] == "Failed"
            # delivery happens after the reply: waiting for "hung" would take ≥ 2 × 2 s + backoff
            assert time.monotonic() - started < 3.0
            with anyio.fail_after(20):
                while True:
                    ev = (await env.op("GET", f"/api/v1/runs/{run_id}/events")).json()
                    notes = [e for e in ev if e["kind"] == "notification"]
                    if sum("failed after" in e["message"] for e in notes) == 2:
                        break
                    await anyio.sleep(0.1)
            # the run's history shows every attempt of both targets: one retry, then the failure
            for target in ("down", "hung"):
                mine = [e["message"] for e in notes if e["data"]["target"] == target]
                assert len(mine) == 2, mine
                assert "attempt 1/2 failed, retrying" in mine[0] and "failed after 2 attempt(s)" in mine[1], mine
            assert "500" in [e["message"] for e in notes if e["data"]["target"] == "down"][1]
            d = await env.detail(run_id)
            assert d["run"]["state"] in ("Failed", "FailedHolding") and d["run"]["reason"] == "fan"
    finally:
        srv.shutdown()


async def test_janitor_removes_old_files_keeps_history(env):
    run_id, tok = await env.running()
    await env.agent("POST", f"/api/v1/runs/{run_id}/log", tok, json={"seq": 1, "lines": [["2026-01-01T00:00:00Z", "Alpha", "info", "x"]]})
    await env.agent("POST", f"/api/v1/runs/{run_id}/result", tok, json={"stage": "Alpha", "verdict": "hold", "hold": True})
    await env.agent("POST", f"/api/v1/runs/{run_id}/hold", tok, json={"ip": "10.0.0.9"})
    d = await env.detail(run_id)
    key = [a for a in d["artifacts"] if a["kind"] == "hold_key"][0]
    rt = env.rt
    old = d["run"]["completed_at"]
    from vetting_server.db.database import as_dt

    async with rt.db.transaction() as tx:
        await tx.execute("UPDATE runs SET completed_at = $2 WHERE id = $1", run_id, as_dt(old) - timedelta(days=90))
    import anyio

    with anyio.fail_after(10):  # the failed run's report is written in the background
        while not (await env.detail(run_id))["run"]["report_path"]:
            await anyio.sleep(0.05)
    removed = await rt.scheduler.janitor_once()
    assert removed == {"artifacts": 1, "log_lines": 1}  # the hold key; the reports stay
    assert (await env.op("GET", f"/api/v1/runs/{run_id}/report/json")).status_code == 200
    import os

    assert not os.path.exists(key["path"])
    d = await env.detail(run_id)
    assert d["run"]["id"] == run_id and d["stages"]  # history stays
    assert d["log_line_count"] == 0
