"""Numbers and nesting are bounded before anything reaches the database (issue 18, item 4):
a 4xx naming the field, on every route family (operator, routed agent, edge), never a 500
(both engines; the edge protocol on a real socket)."""

from __future__ import annotations

import pytest

from .conftest import sample

pytestmark = pytest.mark.anyio

TS = "2026-11-23T01:00:00Z"
BIG = 2**63  # one past BIGINT
DEEP = 5000  # past msgspec's own recursion limit


def deep(n: int = DEEP) -> bytes:
    return b"[" * n + b"]" * n


def _field(r, status: int = 400) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert body["status_code"] == status and body["detail"]
    return body["extra"]["field"]


async def test_out_of_range_integers_in_bodies_name_the_field(any_env):
    env = any_env
    run_id, tok = await env.running()
    cases = [
        ("sensor", {"seq": BIG, "samples": [sample(TS, "Alpha", "temp", "cpu/0", 1.0)]}, "$.seq"),
        ("log", {"seq": BIG, "lines": []}, "$.seq"),
        ("heartbeat", {"progress": 1e308}, "$.progress"),
        ("heartbeat", {"spool_depth": BIG}, "$.spool_depth"),
        ("result", {"stage": "Alpha", "verdict": "passed", "log_seq": BIG}, "$.log_seq"),
        ("result", {"stage": "Alpha", "verdict": "passed", "substeps": [{"stage_name": "Alpha", "ordinal": 2**40, "name": "x"}]},
         "$.substeps[0].ordinal"),
        ("result", {"stage": "Alpha", "verdict": "passed", "artifacts": [
            {"kind": "raw", "path": "/x", "sha256": "0" * 64, "size_bytes": BIG}]}, "$.artifacts[0].size_bytes"),
        ("result", {"stage": "Alpha", "verdict": "passed", "inventory": {"n": [1, list(range(10_001))]}}, "$.inventory.n[1]"),
    ]
    for route, body, field in cases:
        r = await env.agent("POST", f"/api/v1/runs/{run_id}/{route}", tok, json=body)
        assert _field(r) == field, (route, r.text)
    r = await env.op("POST", "/api/v1/runs", json={"host_id": BIG})
    assert _field(r) == "$.host_id"
    d = await env.detail(run_id)
    assert d["run"]["state"] == "Running" and d["measurement_count"] == 0


async def test_out_of_range_ids_in_paths_and_queries(any_env):
    env = any_env
    run_id, tok = await env.running()
    # agent routes, with and without a token: the guard bounds the id before the database sees it
    for route in ("heartbeat", "sensor", "log", "result", "hello"):
        for token in (tok, None):
            r = await env.agent("POST", f"/api/v1/runs/{BIG}/{route}", token, json={})
            assert 400 <= r.status_code < 500, (route, r.status_code, r.text)
    for path in (f"/api/v1/runs/{BIG}", f"/api/v1/hosts/{BIG}", f"/api/v1/runs/{BIG}/events", f"/api/v1/runs/{BIG}/hold-key"):
        r = await env.op("GET", path)
        assert 400 <= r.status_code < 500, (path, r.status_code, r.text)
    for path, name in ((f"/api/v1/runs?offset={BIG}", "offset"), (f"/api/v1/events?after={BIG}", "after"),
                       (f"/api/v1/runs?host_id={BIG}", "host_id"), (f"/api/v1/runs/{run_id}/logs?after={BIG}", "after")):
        r = await env.op("GET", path)
        assert r.status_code == 400, (path, r.status_code, r.text)
        assert name in r.text


async def test_deep_json_is_400_on_every_route_family(any_env):
    env = any_env
    run_id, tok = await env.running()
    hdr = {"Content-Type": "application/json"}
    unknown = b'{"zz": ' + deep() + b"}"  # inside an unknown (ignored) field
    for route in ("heartbeat", "sensor", "log", "result", "claim", "hello", "hold", "peer", "artifact"):
        for token in (tok, None, "vr_wrong"):
            r = await env.agent("POST", f"/api/v1/runs/{run_id}/{route}", token, content=unknown, headers=hdr)
            assert 400 <= r.status_code < 500, (route, token, r.status_code, r.text)
        r = await env.agent("POST", f"/api/v1/runs/{run_id}/{route}", tok, content=deep(), headers=hdr)
        assert r.status_code == 400, (route, r.status_code, r.text)
    r = await env.agent("POST", "/api/v1/agents/heartbeat", "vh_x", content=unknown, headers=hdr)
    assert 400 <= r.status_code < 500
    for method, path in (("POST", "/api/v1/hosts"), ("POST", "/api/v1/runs"), ("POST", "/api/v1/auth/token"),
                         ("POST", f"/api/v1/runs/{run_id}/cancel"), ("POST", f"/api/v1/runs/{run_id}/override"),
                         ("PATCH", "/api/v1/hosts/1")):
        r = await env.op(method, path, content=unknown, headers=hdr)
        assert 400 <= r.status_code < 500, (path, r.status_code, r.text)
    # free-form fields: nesting past 32 levels and huge containers name the path
    summary = {"a": 1}
    for _ in range(40):
        summary = {"a": summary}
    r = await env.agent("POST", f"/api/v1/runs/{run_id}/result", tok, json={"stage": "Alpha", "verdict": "passed", "summary": summary})
    assert _field(r).startswith("$.summary.a.a"), r.text
    h = await env.op("POST", "/api/v1/hosts", json={"name": "n9", "mac": "aa:bb:cc:00:00:09", "boot_config": {"x": list(range(10_001))}})
    assert _field(h) == "$.boot_config.x"
    assert (await env.detail(run_id))["run"]["state"] == "Running"


async def test_a_body_is_required(any_env):
    env = any_env
    run_id, tok = await env.running()
    for route in ("heartbeat", "sensor", "log", "result"):
        r = await env.agent("POST", f"/api/v1/runs/{run_id}/{route}", tok, content=b"", headers={"Content-Type": "application/json"})
        assert r.status_code == 400, (route, r.status_code, r.text)
        assert "needs a JSON body" in r.json()["detail"]


async def test_control_characters_in_log_lines_are_stored_raw_and_shown_escaped(env):
    run_id, tok = await env.running()
    hostile = "\x1b[2J\x1b]0;owned\x07\x1b[31mFAIL\rINFO [Alpha] all good\nfake line\x9b1m\ttab"
    r = await env.agent("POST", f"/api/v1/runs/{run_id}/log", tok, json={"seq": 1, "lines": [[TS, "Alpha", "info", hostile]]})
    assert r.status_code == 200, r.text
    assert await env.rt.db.fetchval("SELECT message FROM log_lines WHERE run_id = $1", run_id) == hostile  # raw
    text = (await env.op("GET", f"/api/v1/runs/{run_id}/logs")).text
    assert text.count("\n") == 1 and "\x1b" not in text and "\r" not in text and "\x9b" not in text
    assert text.endswith("[Alpha] \\x1b[2J\\x1b]0;owned\\x07\\x1b[31mFAIL\\x0dINFO [Alpha] all good\\x0afake line\\x9b1m\ttab\n")


async def test_nul_in_text_is_400_on_every_engine(any_env):
    """PostgreSQL cannot store U+0000: it was a 500 there (and an agent's batch retried for ever)."""
    env = any_env
    run_id, tok = await env.running()
    r = await env.agent("POST", f"/api/v1/runs/{run_id}/log", tok, json={"seq": 1, "lines": [[TS, "Alpha", "info", "a\x00b"]]})
    assert _field(r) == "$.lines[0][3]", r.text
    r = await env.agent("POST", f"/api/v1/runs/{run_id}/hello", tok, json={"agent_version": "t", "hostname": "n\x00"})
    assert _field(r) == "$.hostname"
    r = await env.agent("POST", f"/api/v1/runs/{run_id}/result", tok, json={"stage": "Alpha", "verdict": "passed", "summary": {"k\x00": 1}})
    assert r.status_code == 400, r.text
    for path in ("/api/v1/runs?state=a%00b", "/api/v1/hosts?limit=1&x=%00"):
        r = await env.op("GET", path)
        assert r.status_code == 400 and "U+0000" in r.json()["detail"], (path, r.text)
    assert (await env.detail(run_id))["log_line_count"] == 0
