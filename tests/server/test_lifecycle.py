"""The run lifecycle through the agent protocol, in-process, on both engines."""

from __future__ import annotations

import pytest

from .conftest import sample

pytestmark = pytest.mark.anyio

TS = "2026-11-23T01:00:00Z"


async def test_full_run_completes_with_report(env):
    run_id, tok = await env.running()
    d = await env.detail(run_id)
    assert d["run"]["state"] == "Running"
    assert d["run"]["current_stage"] == "Alpha"
    assert [s["name"] for s in d["stages"]] == ["Alpha", "Gate", "Beta"]
    assert [s["state"] for s in d["stages"]] == ["running", "pending", "pending"]

    r = await env.agent("POST", f"/api/v1/runs/{run_id}/sensor", tok, json={
        "seq": 1, "samples": [sample(TS, "Alpha", "temp", "cpu/0", 50.0, "C"), sample(TS, "Alpha", "temp", "cpu/1", 51.0, "C")]})
    assert r.status_code == 200, r.text
    assert r.json() == {"seq": 1, "stored": 2, "duplicate": False, "breaches": 0}
    r = await env.agent("POST", f"/api/v1/runs/{run_id}/log", tok, json={"seq": 1, "lines": [[TS, "Alpha", "info", "hello"]]})
    assert r.json()["stored"] == 1

    r = await env.agent("POST", f"/api/v1/runs/{run_id}/result", tok, json={
        "stage": "Alpha", "verdict": "passed", "inventory": {"gate": "open"}, "sensor_seq": 1, "log_seq": 1})
    assert r.status_code == 200, r.text
    reply = r.json()
    assert reply["verdict"] == "passed" and reply["next_stage"] == "Beta" and reply["next_state"] == "Running"

    d = await env.detail(run_id)
    states = {s["name"]: s["state"] for s in d["stages"]}
    assert states == {"Alpha": "passed", "Gate": "passed", "Beta": "running"}
    assert d["inventory"] == {"gate": "open"}

    r = await env.agent("POST", f"/api/v1/runs/{run_id}/result", tok, json={
        "stage": "Beta", "verdict": "passed",
        "measurements": [sample(TS, "Beta", "throughput", "sda", 995.0, "MB/s")],
        "substeps": [{"stage_name": "Beta", "ordinal": 0, "name": "sda", "state": "passed"}],
        "firmware": [{"component": "bios", "identifier": "system", "version": "1.2.3"}]})
    assert r.status_code == 200, r.text
    assert r.json()["next_state"] == "Reporting"
    d = await env.wait_state(run_id, "Completed")
    assert d["run"]["result"] == "pass"
    assert d["run"]["report_path"]
    assert d["measurement_count"] == 4  # 2 streamed + 1 in the result + 1 from Gate
    assert d["log_line_count"] >= 2
    assert d["substeps"][0]["name"] == "sda"
    assert d["firmware"][0]["version"] == "1.2.3"
    assert {"report", "report_html", "report_ocptv"} <= {a["kind"] for a in d["artifacts"]}
    html = await env.op("GET", f"/api/v1/runs/{run_id}/report/html")
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert "node1" in html.text
    rep = (await env.op("GET", f"/api/v1/runs/{run_id}/report/json")).json()
    assert rep["run"]["id"] == run_id
    # the report describes the finished run, not the Reporting step that wrote it
    assert (rep["run"]["state"], rep["run"]["result"]) == ("Completed", "pass")
    assert rep["run"]["completed_at"] and rep["run"]["duration_s"] is not None
    assert rep["run"]["completed_at"][:19] == d["run"]["completed_at"][:19]
    ocptv = await env.op("GET", f"/api/v1/runs/{run_id}/report/ocptv")
    assert ocptv.status_code == 200 and "testRunStart" in ocptv.text

    hb = await env.agent("POST", f"/api/v1/runs/{run_id}/heartbeat", tok, json={})
    assert hb.status_code == 200 and hb.json()["cmd"] == "shutdown"
    # a finished run's token is dead on every other route
    r = await env.agent("POST", f"/api/v1/runs/{run_id}/log", tok, json={"seq": 2, "lines": []})
    assert r.status_code == 403


async def test_critical_breach_fails_a_passed_stage(env):
    run_id, tok = await env.running()
    r = await env.agent("POST", f"/api/v1/runs/{run_id}/sensor", tok, json={
        "seq": 1, "samples": [sample(TS, "Alpha", "temp", "cpu/0", 97.5, "C"), sample(TS, "Alpha", "power", "psu0", 650.0, "W")]})
    assert r.json()["breaches"] == 2
    r = await env.agent("POST", f"/api/v1/runs/{run_id}/result", tok, json={"stage": "Alpha", "verdict": "passed"})
    body = r.json()
    assert body["verdict"] == "failed"
    assert "temp cpu/0" in body["reason"]
    assert body["next_state"] == "Failed"
    assert body["hold"] is True  # hold.enabled defaults to true
    d = await env.detail(run_id)
    assert d["run"]["failed_stage"] == "Alpha"
    assert d["breach_count"] == 2
    sev = sorted(b["severity"] for b in d["breaches"])
    assert sev == ["critical", "warning"]
    tally = {t["key"]: t for t in d["tallies"]}
    assert tally["cpu/0"]["breaches"] == 1 and tally["cpu/0"]["max_observed"] == 97.5

    # a failed run gets its report too, with what failed at the top; the state stays
    import anyio

    with anyio.fail_after(10):
        while not (await env.detail(run_id))["run"]["report_path"]:
            await anyio.sleep(0.05)
    d = await env.detail(run_id)
    assert d["run"]["state"] in ("Failed", "FailedHolding") and d["run"]["result"] == "fail"
    rep = (await env.op("GET", f"/api/v1/runs/{run_id}/report/json")).json()
    assert rep["run"]["result"] == "fail"
    html = await env.op("GET", f"/api/v1/runs/{run_id}/report/html")
    assert html.status_code == 200 and "temp cpu/0" in html.text


async def test_breach_inside_result_measurements_fails_stage(env):
    run_id, tok = await env.running()
    r = await env.agent("POST", f"/api/v1/runs/{run_id}/result", tok, json={
        "stage": "Alpha", "verdict": "passed", "measurements": [sample(TS, "Alpha", "temp", "cpu/3", None)]})
    body = r.json()
    assert body["verdict"] == "failed"  # a missing value is a breach
    assert body["breaches"][0]["key"] == "cpu/3"


async def test_orchestrator_stage_failure_fails_run(env):
    run_id, tok = await env.running()
    r = await env.agent("POST", f"/api/v1/runs/{run_id}/result", tok, json={
        "stage": "Alpha", "verdict": "passed", "inventory": {"gate": "closed"}})
    body = r.json()
    assert body["next_state"] == "Failed"
    d = await env.detail(run_id)
    assert d["run"]["failed_stage"] == "Gate"
    assert "the gate is closed" in d["run"]["reason"]
    stages = {s["name"]: s for s in d["stages"]}
    assert stages["Gate"]["state"] == "failed"
    ev = (await env.op("GET", f"/api/v1/runs/{run_id}/events")).json()
    assert any(e["kind"] == "StageFailed" for e in ev)


async def test_result_idempotent_and_conflicting(env):
    run_id, tok = await env.running()
    body = {"stage": "Alpha", "verdict": "passed", "summary": {"x": 1}}
    r1 = await env.agent("POST", f"/api/v1/runs/{run_id}/result", tok, json=body)
    r2 = await env.agent("POST", f"/api/v1/runs/{run_id}/result", tok, json=body)
    assert r1.status_code == r2.status_code == 200
    assert r1.json() == r2.json()
    d = await env.detail(run_id)
    assert d["run"]["current_stage"] == "Beta"
    r3 = await env.agent("POST", f"/api/v1/runs/{run_id}/result", tok, json={**body, "summary": {"x": 2}})
    assert r3.status_code == 409
    assert "different result" in r3.json()["detail"]
    r4 = await env.agent("POST", f"/api/v1/runs/{run_id}/result", tok, json={"stage": "Nope", "verdict": "passed"})
    assert r4.status_code == 409 and "not in run" in r4.json()["detail"]


async def test_batches_stored_once(env):
    run_id, tok = await env.running()
    batch = {"seq": 7, "samples": [sample(TS, "Alpha", "temp", "cpu/0", 40.0)] * 3}
    a = (await env.agent("POST", f"/api/v1/runs/{run_id}/sensor", tok, json=batch)).json()
    b = (await env.agent("POST", f"/api/v1/runs/{run_id}/sensor", tok, json=batch)).json()
    assert a == {"seq": 7, "stored": 3, "duplicate": False, "breaches": 0}
    assert b["duplicate"] is True and b["stored"] == 0
    logs = {"seq": 1, "lines": [[TS, "Alpha", "info", f"line {i}"] for i in range(5)]}
    await env.agent("POST", f"/api/v1/runs/{run_id}/log", tok, json=logs)
    again = (await env.agent("POST", f"/api/v1/runs/{run_id}/log", tok, json=logs)).json()
    assert again["duplicate"] is True
    d = await env.detail(run_id)
    assert d["measurement_count"] == 3 and d["log_line_count"] == 5
    claim = (await env.agent("POST", f"/api/v1/runs/{run_id}/claim", tok, json={"agent_version": "t", "hostname": "n"})).json()
    # 1..6 never came: the last contiguous sensor batch is 0, the highest 7 (the gaps in test_batch_numbering)
    assert (claim["sensor_seq"], claim["sensor_seq_max"], claim["sensor_gaps"]) == (0, 7, [[1, 6]]) and claim["log_seq"] == 1


async def test_result_waits_for_missing_sensor_batch(env):
    run_id, tok = await env.running()
    r = await env.agent("POST", f"/api/v1/runs/{run_id}/result", tok, json={"stage": "Alpha", "verdict": "passed", "sensor_seq": 2})
    assert r.status_code == 503
    assert r.json()["extra"] == {"missing": {"sensor": 2}}


async def test_hold_override_retry_and_release(env):
    run_id, tok = await env.running()
    await env.agent("POST", f"/api/v1/runs/{run_id}/result", tok, json={"stage": "Alpha", "verdict": "passed"})
    r = await env.agent("POST", f"/api/v1/runs/{run_id}/result", tok, json={
        "stage": "Beta", "verdict": "hold", "reason": "wipe probe found an ext4 filesystem on sdb", "hold": True})
    assert r.json()["hold"] is True and r.json()["next_state"] == "Failed"
    r = await env.agent("POST", f"/api/v1/runs/{run_id}/hold", tok, json={"ip": "10.0.0.7", "reason": "wipe probe"})
    assert r.status_code == 200, r.text
    hold = r.json()
    assert hold["authorized_key"].startswith("ssh-ed25519 ")
    assert "root@10.0.0.7" in hold["ssh_command"]
    d = await env.detail(run_id)
    assert d["run"]["state"] == "FailedHolding" and d["run"]["hold_ip"] == "10.0.0.7"
    key = await env.op("GET", f"/api/v1/runs/{run_id}/hold-key")
    assert key.status_code == 200 and b"PRIVATE KEY" in key.content

    hb = (await env.agent("POST", f"/api/v1/runs/{run_id}/heartbeat", tok, json={})).json()
    assert hb["cmd"] == "continue"
    r = await env.op("POST", f"/api/v1/runs/{run_id}/override", json={"flags": {"wipe": True}, "reason": "disk is scratch"})
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "Running"
    hb = (await env.agent("POST", f"/api/v1/runs/{run_id}/heartbeat", tok, json={})).json()
    assert hb == {"cmd": "retry_stage", "state": "Running", "stage": "Beta", "override_flags": {"wipe": True}}
    hb = (await env.agent("POST", f"/api/v1/runs/{run_id}/heartbeat", tok, json={"stage": "Beta", "progress": 0.1})).json()
    assert hb["cmd"] == "continue"  # the agent is on it
    r = await env.agent("POST", f"/api/v1/runs/{run_id}/result", tok, json={"stage": "Beta", "verdict": "failed", "reason": "badblocks"})
    assert r.json()["verdict"] == "failed"
    d = await env.detail(run_id)
    assert {s["name"]: s["attempt"] for s in d["stages"]}["Beta"] == 1
    await env.agent("POST", f"/api/v1/runs/{run_id}/hold", tok, json={"ip": "10.0.0.7"})
    r = await env.op("POST", f"/api/v1/runs/{run_id}/release", json={"reason": "RMA"})
    assert r.json()["state"] == "Released"
    hb = await env.agent("POST", f"/api/v1/runs/{run_id}/heartbeat", tok, json={})
    assert hb.json()["cmd"] == "abort"
    ev = (await env.op("GET", f"/api/v1/runs/{run_id}/events")).json()
    kinds = [e["kind"] for e in ev]
    for k in ("audit.run_started", "HoldingOpened", "audit.override", "audit.release", "audit.hold_key"):
        assert k in kinds, k
    assert all(e["actor"] == "admin" for e in ev if e["kind"].startswith("audit."))


async def test_cancel(env):
    host = await env.create_host()
    run_id, tok = await env.start_run(host["id"])
    r = await env.op("POST", f"/api/v1/runs/{run_id}/cancel")
    assert r.status_code == 200 and r.json()["state"] == "Cancelled"
    r = await env.agent("POST", f"/api/v1/runs/{run_id}/hello", tok, json={"agent_version": "t", "hostname": "n"})
    assert r.status_code == 403
    r = await env.op("POST", f"/api/v1/runs/{run_id}/cancel")
    assert r.status_code == 409


async def test_observers_receive_run_events(env):
    from . import server_plugin

    server_plugin.SEEN.clear()
    run_id, tok = await env.running()
    await env.agent("POST", f"/api/v1/runs/{run_id}/result", tok, json={"stage": "Alpha", "verdict": "failed", "reason": "fan 3 stopped"})
    import anyio

    with anyio.fail_after(5):
        while not server_plugin.SEEN:
            await anyio.sleep(0.02)
    ev = server_plugin.SEEN[0]
    assert ev.kind.value == "StageFailed" and ev.run_id == run_id and ev.host_name == "node1"
    assert ev.stage == "Alpha" and "fan 3 stopped" in ev.message
