"""Concurrent duplicate results and transitions never double-advance a run.

In-process (many concurrent requests to one app) and across two real server
processes sharing one database, on SQLite and PostgreSQL.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import anyio
import pytest

from tests.support.server import ServerProcess

pytestmark = pytest.mark.anyio


async def _post_many(env, url, tok, bodies):
    out = [None] * len(bodies)

    async def one(i, body):
        out[i] = await env.agent("POST", url, tok, json=body)

    async with anyio.create_task_group() as tg:
        for i, b in enumerate(bodies):
            tg.start_soon(one, i, b)
    return out


async def test_concurrent_identical_results_advance_once(env):
    run_id, tok = await env.running()
    body = {"stage": "Alpha", "verdict": "passed", "summary": {"n": 1}}
    rs = await _post_many(env, f"/api/v1/runs/{run_id}/result", tok, [body] * 12)
    assert {r.status_code for r in rs} == {200}, [r.text for r in rs if r.status_code != 200]
    assert len({r.text for r in rs}) == 1
    ev = (await env.op("GET", f"/api/v1/runs/{run_id}/events")).json()
    assert sum(1 for e in ev if e["message"] == "stage Alpha passed") == 1
    assert sum(1 for e in ev if e["message"] == "stage Beta started") == 1
    d = await env.detail(run_id)
    assert d["run"]["current_stage"] == "Beta"


async def test_concurrent_conflicting_results_one_wins(env):
    run_id, tok = await env.running()
    bodies = [{"stage": "Alpha", "verdict": "passed", "summary": {"n": i}} for i in range(8)]
    rs = await _post_many(env, f"/api/v1/runs/{run_id}/result", tok, bodies)
    codes = sorted(r.status_code for r in rs)
    assert codes.count(200) == 1 and codes.count(409) == 7, codes


async def test_concurrent_operator_actions_apply_once(env):
    host = await env.create_host()
    run_id, _ = await env.start_run(host["id"])
    rs = []

    async def cancel():
        rs.append(await env.op("POST", f"/api/v1/runs/{run_id}/cancel", json={"reason": "x"}))

    async with anyio.create_task_group() as tg:
        for _ in range(6):
            tg.start_soon(cancel)
    assert sorted(r.status_code for r in rs) == [200] + [409] * 5
    ev = (await env.op("GET", f"/api/v1/runs/{run_id}/events")).json()
    assert sum(1 for e in ev if (e.get("data") or {}).get("to") == "Cancelled") == 1


def test_two_server_processes_on_one_database(tmp_path, database_url):
    """Two real servers on one database: duplicate results through both advance once."""
    a = ServerProcess(tmp_path / "a", database_url=database_url)
    b = ServerProcess(tmp_path / "b", database_url=database_url)
    with a:
        b.token = a.token  # same database: the operator token is valid on both
        with b:
            host = a.create_host("node1", "aa:bb:cc:00:00:01")
            run_id, tok = a.start_run(host["id"], profile="quick", stages=["InventoryCheck", "CPUStress"])
            a.agent("POST", f"/api/v1/runs/{run_id}/hello", tok, json={"agent_version": "t", "hostname": "n"}).raise_for_status()
            b.agent("POST", f"/api/v1/runs/{run_id}/claim", tok, json={"agent_version": "t", "hostname": "n"}).raise_for_status()
            body = {"stage": "InventoryCheck", "verdict": "passed", "inventory": {"cpu": {"threads": 2}}}
            servers = [a, b] * 8
            with ThreadPoolExecutor(16) as pool:
                rs = list(pool.map(lambda s: s.agent("POST", f"/api/v1/runs/{run_id}/result", tok, json=body), servers))
            assert {r.status_code for r in rs} == {200}, [r.text for r in rs if r.status_code != 200]
            assert len({r.text for r in rs}) == 1
            assert rs[0].json()["next_stage"] == "CPUStress"
            ev = a.api("GET", f"/api/v1/runs/{run_id}/events").json()
            assert sum(1 for e in ev if e["message"] == "stage InventoryCheck passed") == 1
            assert sum(1 for e in ev if e["message"] == "stage CPUStress started") == 1
            # different bodies through both servers: one wins
            body2 = [{"stage": "CPUStress", "verdict": "passed", "summary": {"i": i}} for i in range(10)]
            with ThreadPoolExecutor(10) as pool:
                rs = list(pool.map(lambda ib: [a, b][ib[0] % 2].agent("POST", f"/api/v1/runs/{run_id}/result", tok, json=ib[1]),
                                   enumerate(body2)))
            codes = sorted(r.status_code for r in rs)
            assert codes.count(200) == 1 and codes.count(409) == 9, codes
            d = a.wait_state(run_id, "Completed", timeout=30)
            assert [s["state"] for s in d["stages"]] == ["passed", "passed"]
