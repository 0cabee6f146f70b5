"""Operator API: hosts CRUD, run listing, spec validation through the real SpecValidate."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.anyio

SPEC = """\
cpu:
  threads: 64
memory:
  total_gib: 512
"""


async def test_spec_mismatch_from_the_real_spec_validate(env):
    host = await env.create_host("n1", "aa:bb:cc:00:00:01", expected_spec_yaml=SPEC)
    run_id, tok = await env.start_run(host["id"], profile="quick", stages=["InventoryCheck", "SpecValidate", "CPUStress"])
    await env.agent("POST", f"/api/v1/runs/{run_id}/hello", tok, json={"agent_version": "t", "hostname": "n1"})
    claim = (await env.agent("POST", f"/api/v1/runs/{run_id}/claim", tok, json={"agent_version": "t", "hostname": "n1"})).json()
    assert claim["expected_spec"]["cpu"] == {"threads": 64}
    assert [(s["name"], s["runs_on"]) for s in claim["stages"]][:2] == [("InventoryCheck", "agent"), ("SpecValidate", "orchestrator")]
    inventory = {"cpu": {"model": "Tiny", "threads": 2, "cores": 2, "sockets": 1}, "memory": {"total_gib": 8.0}}
    r = await env.agent("POST", f"/api/v1/runs/{run_id}/result", tok, json={
        "stage": "InventoryCheck", "verdict": "passed", "inventory": inventory})
    assert r.status_code == 200, r.text
    reply = r.json()
    assert reply["next_state"] == "Failed" and reply["hold"] is True
    d = await env.detail(run_id)
    assert d["run"]["failed_stage"] == "SpecValidate"
    assert "critical spec mismatch" in d["run"]["reason"]
    fields = {x["field"]: x for x in d["spec_diffs"]}
    assert "cpu.threads" in fields and fields["cpu.threads"]["severity"] == "critical"
    assert fields["cpu.threads"]["expected"] == "64" and fields["cpu.threads"]["actual"] == "2"
    assert fields["cpu.threads"]["stage"] == "SpecValidate"
    ev = (await env.op("GET", f"/api/v1/runs/{run_id}/events")).json()
    assert any(e["kind"] == "SpecMismatch" for e in ev)
    logs = await env.op("GET", f"/api/v1/runs/{run_id}/logs")
    assert "cpu.threads" in logs.text  # SpecValidate's own log lines are stored


async def test_spec_diffs_from_any_stage_summary(env):
    run_id, tok = await env.running()
    r = await env.agent("POST", f"/api/v1/runs/{run_id}/result", tok, json={
        "stage": "Alpha", "verdict": "passed", "summary": {"spec_diffs": [
            {"field": "firmware.bios", "expected": "2.1", "actual": "1.9", "severity": "warning", "message": "old BIOS"}]}})
    assert r.status_code == 200
    d = await env.detail(run_id)
    assert d["spec_diffs"][0]["field"] == "firmware.bios" and d["spec_diffs"][0]["stage"] == "Alpha"


async def test_host_crud_and_audit(env):
    h = await env.create_host("n1", "aa:bb:cc:00:00:01", notes="rack 4")
    r = await env.op("PATCH", f"/api/v1/hosts/{h['id']}", json={"name": "n1b", "mac": "AA:BB:CC:00:00:02", "expected_spec_yaml": SPEC})
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "n1b" and r.json()["mac"] == "aa:bb:cc:00:00:02" and r.json()["agent_token"] is None
    r = await env.op("PATCH", f"/api/v1/hosts/{h['id']}", json={"expected_spec_yaml": "cpu: {threads: x}"})
    assert r.status_code == 422 and r.json()["extra"] == {"field": "expected_spec_yaml"}
    r = await env.op("POST", f"/api/v1/hosts/{h['id']}/agent-token")
    new_token = r.json()["agent_token"]
    assert new_token and new_token != h["agent_token"]
    poll = {"hostname": "n1", "agent_version": "t"}
    assert (await env.agent("POST", "/api/v1/agents/heartbeat", h["agent_token"], json=poll)).status_code == 401
    assert (await env.agent("POST", "/api/v1/agents/heartbeat", new_token, json=poll)).status_code == 200
    run_id, _ = await env.start_run(h["id"])
    r = await env.op("DELETE", f"/api/v1/hosts/{h['id']}")
    assert r.status_code == 409  # a run is in progress
    await env.op("POST", f"/api/v1/runs/{run_id}/cancel")
    ev = (await env.op("GET", f"/api/v1/hosts/{h['id']}/events")).json()
    kinds = [e["kind"] for e in ev]
    assert kinds[:3] == ["audit.host_created", "audit.host_changed", "audit.host_token"]
    assert "audit.cancel" in kinds
    r = await env.op("DELETE", f"/api/v1/hosts/{h['id']}")
    assert r.status_code == 204
    assert (await env.op("GET", f"/api/v1/hosts/{h['id']}")).status_code == 404
    assert (await env.op("GET", f"/api/v1/runs/{run_id}")).status_code == 404  # history went with the host
    audit = (await env.op("GET", "/api/v1/events")).json()
    assert audit[-1]["kind"] == "audit.host_deleted" and audit[-1]["actor"] == "admin"


async def test_run_list_filter_paginate_order(env):
    ids = []
    for i in range(5):
        h = await env.create_host(f"n{i}", f"aa:bb:cc:00:00:1{i}")
        run_id, _ = await env.start_run(h["id"])
        ids.append(run_id)
    await env.op("POST", f"/api/v1/runs/{ids[1]}/cancel")
    page = (await env.op("GET", "/api/v1/runs", params={"limit": 2, "offset": 1, "order_by": "id"})).json()
    assert page["total"] == 5 and [r["id"] for r in page["items"]] == ids[1:3]
    page = (await env.op("GET", "/api/v1/runs", params={"order_by": "-id"})).json()
    assert [r["id"] for r in page["items"]] == ids[::-1]
    page = (await env.op("GET", "/api/v1/runs", params={"state": "Cancelled"})).json()
    assert [r["id"] for r in page["items"]] == [ids[1]]
    page = (await env.op("GET", "/api/v1/runs", params={"host": "n3"})).json()
    assert [r["host_name"] for r in page["items"]] == ["n3"]
    page = (await env.op("GET", "/api/v1/runs", params={"order_by": "host"})).json()
    assert [r["host_name"] for r in page["items"]] == ["n0", "n1", "n2", "n3", "n4"]


async def test_series_are_downsampled(env):
    run_id, tok = await env.running()
    samples = [[f"2026-11-23T01:{i // 60:02d}:{i % 60:02d}Z", "Alpha", "temp", "cpu/0", float(i), "C", None] for i in range(600)]
    await env.agent("POST", f"/api/v1/runs/{run_id}/sensor", tok, json={"seq": 1, "samples": samples})
    s = (await env.op("GET", f"/api/v1/runs/{run_id}/series", params={"kind": "temp", "points": 10})).json()
    assert len(s) == 1 and s[0]["count"] == 600 and len(s[0]["points"]) == 10
    first = s[0]["points"][0]
    assert first[1] == 0.0 and first[3] == 59.0 and first[4] == 60  # min, max, count of the first bucket
    d = await env.detail(run_id)
    assert d["series"][0]["key"] == "cpu/0" and d["series"][0]["stage"] == "Alpha"

