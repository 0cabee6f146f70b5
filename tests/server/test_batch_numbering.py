"""Batch numbering (issue 18, item 6): a batch's content digest is stored, so a reused
seq with other content is a 409 naming it instead of silently dropped data; claim reports
the last contiguous seq, the gaps and the highest stored (both engines, both route
families)."""

from __future__ import annotations

import json

import pytest

from vetting_agent.spool import KIND_SENSOR, Spool
from vetting_core.model import Measurement

from .conftest import sample

pytestmark = pytest.mark.anyio

TS = "2026-11-23T01:00:00Z"
CLAIM = {"agent_version": "t", "hostname": "node1"}


async def test_same_seq_other_content_is_409_and_loses_nothing(any_env):
    env = any_env
    run_id, tok = await env.running()
    url = f"/api/v1/runs/{run_id}"
    lines = {"seq": 1, "lines": [[TS, "Alpha", "info", "first"]]}
    r = await env.agent("POST", f"{url}/log", tok, json=lines)
    assert r.json() == {"seq": 1, "stored": 1, "duplicate": False, "breaches": 0}, r.text
    # the same content, encoded otherwise (spacing, key order): a retry
    again = json.dumps({"lines": lines["lines"], "seq": 1}, indent=2).encode()
    r = await env.agent("POST", f"{url}/log", tok, content=again, headers={"Content-Type": "application/json"})
    assert r.json() == {"seq": 1, "stored": 0, "duplicate": True, "breaches": 0}, r.text
    r = await env.agent("POST", f"{url}/log", tok, json={"seq": 1, "lines": [[TS, "Alpha", "info", "second"]]})
    assert r.status_code == 409, r.text
    assert "log batch 1" in r.json()["detail"] and r.json()["extra"] == {"stream": "log", "seq": 1}

    s1 = {"seq": 1, "samples": [sample(TS, "Alpha", "temp", "cpu/0", 40.0)]}
    assert (await env.agent("POST", f"{url}/sensor", tok, json=s1)).json()["stored"] == 1
    assert (await env.agent("POST", f"{url}/sensor", tok, json=s1)).json()["duplicate"] is True
    r = await env.agent("POST", f"{url}/sensor", tok, json={"seq": 1, "samples": [sample(TS, "Alpha", "temp", "cpu/0", 99.0)]})
    assert r.status_code == 409 and "sensor batch 1" in r.json()["detail"], r.text
    logs = await env.op("GET", f"{url}/logs")
    assert "first" in logs.text and "second" not in logs.text
    d = await env.detail(run_id)
    assert d["measurement_count"] == 1 and d["log_line_count"] == 1


async def test_claim_reports_the_contiguous_seq_the_gaps_and_the_highest(any_env):
    env = any_env
    run_id, tok = await env.running()
    url = f"/api/v1/runs/{run_id}"
    for seq in (1, 2, 4, 7):
        body = {"seq": seq, "samples": [sample(TS, "Alpha", "temp", "cpu/0", float(seq))]}
        assert (await env.agent("POST", f"{url}/sensor", tok, json=body)).status_code == 200
    for seq in (1, 2, 3):
        assert (await env.agent("POST", f"{url}/log", tok, json={"seq": seq, "lines": []})).status_code == 200
    c = (await env.agent("POST", f"{url}/claim", tok, json=CLAIM)).json()
    assert (c["sensor_seq"], c["sensor_seq_max"], c["sensor_gaps"]) == (2, 7, [[3, 3], [5, 6]])
    assert (c["log_seq"], c["log_seq_max"], c["log_gaps"]) == (3, 3, [])


async def test_a_resumed_spool_numbers_after_the_highest_stored(tmp_path):
    spool = await Spool.open(tmp_path / "fresh.sqlite")  # a new boot: the old spool is gone
    await spool.sync_server(log_seq=0, sensor_seq=2, log_max=0, sensor_max=7)
    from datetime import UTC, datetime

    await spool.append_samples([Measurement(ts=datetime.now(UTC), stage="A", kind="k", key="x", value=1.0)])
    assert await spool.last_seq(KIND_SENSOR) == 8  # never one of the stored numbers
    await spool.aclose()
