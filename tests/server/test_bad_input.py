"""Bad input gets a clear JSON error and changes nothing (both engines)."""

from __future__ import annotations

import pytest

from vetting_core.protocol import ErrorBody

from .conftest import sample

pytestmark = pytest.mark.anyio

TS = "2026-11-23T01:00:00Z"

BODIES = {
    "hello": {"agent_version": "t", "hostname": "n"},
    "claim": {"agent_version": "t", "hostname": "n"},
    "heartbeat": {},
    "log": {"seq": 1, "lines": [[TS, "Alpha", "info", "x"]]},
    "sensor": {"seq": 1, "samples": [sample(TS, "Alpha", "temp", "cpu/0", 1.0)]},
    "result": {"stage": "Alpha", "verdict": "passed"},
    "hold": {"ip": "10.0.0.1"},
    "peer": {"kind": "iperf3"},
    "artifact": {"artifact": {"kind": "k", "path": "/x", "sha256": "00" * 32, "size_bytes": 1}, "content": "eA=="},
    "release": {"lease_id": "x"},
    "heartbeat_host": {"hostname": "n", "agent_version": "t"},
}


def _agent_routes(app) -> list[str]:
    """Every POST route whose handler is tagged ``agent`` (the agent controller)."""
    paths = []
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            if "agent" in (handler.resolve_tags() or ()) and "POST" in handler.http_methods:
                paths.append(route.path)
    return sorted(set(paths))


def _assert_error(r, status: int | tuple[int, ...]) -> dict:
    statuses = (status,) if isinstance(status, int) else status
    assert r.status_code in statuses, (r.status_code, r.text)
    body = r.json()
    err = ErrorBody(**body)
    assert err.status_code == r.status_code and err.detail
    return body


async def test_every_agent_route_rejects_missing_wrong_and_foreign_tokens(env):
    run_a, tok_a = await env.running("node-a", "aa:bb:cc:00:00:0a")
    run_b, tok_b = await env.running("node-b", "aa:bb:cc:00:00:0b")
    routes = _agent_routes(env.app)
    names = {r.rsplit("/", 1)[-1] for r in routes}
    assert {"hello", "claim", "heartbeat", "log", "sensor", "result", "hold", "peer", "release", "artifact"} <= names, routes
    tried = 0
    for path in routes:
        name = path.rsplit("/", 1)[-1]
        url = path.replace("{run_id:int}", str(run_a))
        body = BODIES["heartbeat_host"] if path == "/api/v1/agents/heartbeat" else BODIES[name]
        for token, expect in ((None, 401), ("vr_not-a-real-token", 401), (tok_b, 403)):
            r = await env.agent("POST", url, token, json=body)
            assert not 200 <= r.status_code < 300, (path, token, r.status_code)
            _assert_error(r, expect)
            tried += 1
        r = await env.agent("POST", url, None, headers={"Authorization": "Basic Zm9vOmJhcg=="}, json=body)
        assert r.status_code == 401
    assert tried >= 24
    d = await env.detail(run_a)
    assert d["measurement_count"] == 0 and d["log_line_count"] == 0
    assert d["run"]["state"] == "Running"


async def test_malformed_json_is_400_with_a_message(env):
    run_id, tok = await env.running()
    r = await env.agent("POST", f"/api/v1/runs/{run_id}/sensor", tok, content=b'{"seq": 1, "samples": [',
                        headers={"Content-Type": "application/json"})
    body = _assert_error(r, 400)
    assert "malformed" in body["detail"].lower() or "json" in body["detail"].lower()
    r = await env.agent("POST", f"/api/v1/runs/{run_id}/result", tok, json={"stage": "Alpha", "verdict": "great"})
    body = _assert_error(r, (400, 422))
    assert "verdict" in body["detail"]
    r = await env.op("POST", "/api/v1/hosts", content=b"not json", headers={"Content-Type": "application/json"})
    _assert_error(r, 400)


async def test_oversized_agent_body_is_413(env):
    run_id, tok = await env.running()
    line = [TS, "Alpha", "info", "x" * 1000]
    big = {"seq": 1, "lines": [line] * 1200}  # ≈ 1.2 MB > 1 MiB
    r = await env.agent("POST", f"/api/v1/runs/{run_id}/log", tok, json=big)
    body = _assert_error(r, 413)
    assert "1048576" in body["detail"]
    assert (await env.detail(run_id))["log_line_count"] == 0


async def test_bad_seq_and_unknown_stage(env):
    run_id, tok = await env.running()
    r = await env.agent("POST", f"/api/v1/runs/{run_id}/log", tok, json={"seq": 0, "lines": []})
    _assert_error(r, 400)
    r = await env.agent("POST", f"/api/v1/runs/{run_id}/result", tok, json={"stage": "Ghost", "verdict": "passed"})
    body = _assert_error(r, 409)
    assert "Ghost" in body["detail"]
    r = await env.agent("POST", f"/api/v1/runs/{run_id}/result", tok, json={"stage": "Beta", "verdict": "passed"})
    body = _assert_error(r, 409)
    assert "current stage" in body["detail"]
    r = await env.agent("POST", f"/api/v1/runs/{run_id}/result", tok, json={"stage": "Gate", "verdict": "passed"})
    _assert_error(r, 409)


@pytest.mark.parametrize("mac", ["", "zz:bb:cc:dd:ee:ff", "aa:bb:cc:dd:ee", "01:00:5e:00:00:01", "aa:bb:cc:dd:ee:ff:00"])
async def test_invalid_mac_is_422_naming_the_field(env, mac):
    r = await env.op("POST", "/api/v1/hosts", json={"name": "n1", "mac": mac})
    body = _assert_error(r, 422)
    assert body["detail"].startswith("mac:")
    assert body["extra"] == {"field": "mac"}


async def test_mac_normalised_and_unique(env):
    h = await env.create_host("n1", "AA-BB-CC-DD-EE-FF")
    assert h["mac"] == "aa:bb:cc:dd:ee:ff"
    r = await env.op("POST", "/api/v1/hosts", json={"name": "n2", "mac": "aabb.ccdd.eeff"})
    body = _assert_error(r, 409)
    assert body["extra"] == {"field": "mac"}
    r = await env.op("POST", "/api/v1/hosts", json={"name": "n1", "mac": "aa:bb:cc:dd:ee:01"})
    assert _assert_error(r, 409)["extra"] == {"field": "name"}


@pytest.mark.parametrize(
    "spec, where",
    [
        ("cpu: {threads: many}", "cpu.threads"),
        ("memory:\n  total_gib: -4", "memory.total_gib"),
        ("a: &x [1]\nb: *x", "anchor"),
        ("- just\n- a list", "mapping"),
        ("disks: [{count: 2, bogus: 1}]", "bogus"),
    ],
)
async def test_invalid_spec_is_422_naming_the_field(env, spec, where):
    r = await env.op("POST", "/api/v1/hosts", json={"name": "n1", "mac": "aa:bb:cc:dd:ee:01", "expected_spec_yaml": spec})
    body = _assert_error(r, 422)
    assert body["extra"] == {"field": "expected_spec_yaml"}
    assert where in body["detail"], body["detail"]
    r = await env.op("GET", "/api/v1/hosts")
    assert r.json()["total"] == 0


async def test_operator_routes_need_a_token(env):
    for method, path in (("GET", "/api/v1/hosts"), ("POST", "/api/v1/runs"), ("GET", "/api/v1/runs"), ("GET", "/api/v1/events")):
        r = await env.client.request(method, path, json={} if method == "POST" else None)
        _assert_error(r, 401)
        r = await env.client.request(method, path, headers={"Authorization": "Bearer vo_wrong"})
        _assert_error(r, 401)
    host = await env.create_host()
    run_id, tok = await env.start_run(host["id"])
    r = await env.agent("GET", "/api/v1/hosts", tok)  # a run token is not an operator token
    _assert_error(r, 401)


async def test_run_start_validation(env):
    host = await env.create_host()
    r = await env.op("POST", "/api/v1/runs", json={"host_id": host["id"], "profile": "nope"})
    assert _assert_error(r, 422)["extra"] == {"field": "profile"}
    r = await env.op("POST", "/api/v1/runs", json={"host_id": host["id"], "profile": "srvtest", "stages": ["Nope"]})
    assert _assert_error(r, 422)["extra"] == {"field": "stages"}
    r = await env.op("POST", "/api/v1/runs", json={"host_id": 999, "profile": "srvtest"})
    _assert_error(r, 422)
    r = await env.op("GET", "/api/v1/runs", params={"order_by": "password; drop table runs"})
    assert _assert_error(r, 422)["extra"] == {"field": "order_by"}
    run_id, _ = await env.start_run(host["id"], stages=["Beta"])
    d = await env.detail(run_id)
    assert [s["name"] for s in d["stages"]] == ["Beta"]
    r = await env.op("POST", "/api/v1/runs", json={"host_id": host["id"], "profile": "srvtest"})
    _assert_error(r, 409)  # one run per host at a time


async def test_openapi_documents_every_protocol_body(env):
    r = await env.client.get("/schema/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    schemas = set(doc["components"]["schemas"])
    for name in ("Hello", "HelloReply", "Claim", "ClaimReply", "Heartbeat", "HeartbeatReply", "LogBatch", "SensorBatch",
                 "BatchAck", "StageResult", "ResultReply", "HoldRequest", "HoldReply", "HostHeartbeat",
                 "HostHeartbeatReply", "ErrorBody", "RunDetail", "HostCreate", "RunStart") :
        assert name in schemas, name
    body = doc["paths"]["/api/v1/runs/{run_id}/sensor"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/SensorBatch"}


async def test_edge_routes_answer_as_the_routed_handlers_do(env, monkeypatch):
    """``/heartbeat``, ``/sensor`` and ``/log`` are answered before routing (edge.py);
    their trailing-slash spellings go through the routed handlers. Both must agree."""
    asgi = _count_asgi_edge(monkeypatch)
    await _edge_agrees_with_router(env)
    assert asgi == {"heartbeat": 6, "sensor": 7, "log": 6}


async def test_edge_protocol_answers_as_the_routed_handlers_do(socket_env, monkeypatch):
    """Under uvicorn with :class:`EdgeProtocol` (``vetting serve``), the hot routes are
    answered by the protocol itself, not by the ASGI edge; the replies are the same."""
    asgi = _count_asgi_edge(monkeypatch)
    await _edge_agrees_with_router(socket_env)
    assert asgi == {}


def _count_asgi_edge(monkeypatch) -> dict[str, int]:
    """Counts the requests that reach :func:`vetting_server.edge.routes.answer` (the ASGI edge), by route."""
    from vetting_server.edge import routes as edge

    seen: dict[str, int] = {}
    real = edge.answer

    async def counting(rt, scope, receive, send, run_id, route, max_body):
        name = scope["path"].rsplit("/", 1)[1]
        seen[name] = seen.get(name, 0) + 1
        await real(rt, scope, receive, send, run_id, route, max_body)

    monkeypatch.setattr(edge, "answer", counting)
    return seen


async def _edge_agrees_with_router(env) -> None:
    run_id, tok = await env.running()
    _, other_tok = await env.running("node-b", "aa:bb:cc:00:00:0b")
    cases = {
        "heartbeat": ({"progress": "half"}, "progress", lambda seq: {"stage": "Alpha", "progress": 0.25},
                      lambda seq: {"cmd": "continue", "state": "Running", "stage": None, "override_flags": {}}),
        "sensor": ({"seq": 1, "samples": [["x"]]}, "samples", lambda seq: {**BODIES["sensor"], "seq": seq},
                   lambda seq: {"seq": seq, "stored": 1, "duplicate": False, "breaches": 0}),
        "log": ({"seq": "one", "lines": []}, "seq", lambda seq: {**BODIES["log"], "seq": seq},
                lambda seq: {"seq": seq, "stored": 1, "duplicate": False, "breaches": 0}),
    }
    for seq, slash in ((1, ""), (2, "/")):
        for name, (invalid, field, good, reply) in cases.items():
            url = f"/api/v1/runs/{run_id}/{name}{slash}"
            r = await env.agent("POST", url, tok, content=b"{nope", headers={"Content-Type": "application/json"})
            assert _assert_error(r, 400)["detail"].startswith("malformed JSON"), url
            r = await env.agent("POST", url, tok, json=invalid)
            assert field in _assert_error(r, 400)["detail"], url
            r = await env.agent("POST", url, tok, json={"message": "x" * (2 << 20)})
            assert "too large" in _assert_error(r, 413)["detail"], url
            r = await env.agent("POST", url, None, content=b"{nope")
            assert "missing run token" in _assert_error(r, 401)["detail"], url
            assert r.headers["www-authenticate"] == "Bearer", url
            r = await env.agent("POST", url, other_tok, json=good(seq))
            assert f"not to run {run_id}" in _assert_error(r, 403)["detail"], url
            r = await env.agent("POST", url, tok, json=good(seq))
            assert r.status_code == 200 and r.json() == reply(seq), (url, r.text)
    r = await env.agent("POST", f"/api/v1/runs/{run_id}/sensor", tok, json={"seq": 0, "samples": []})
    body = _assert_error(r, 400)
    assert ">= 1" in body["detail"] and body["extra"] == {"field": "$.seq"}
    assert env.rt.hub.progress[run_id]["percent"] == 25
    d = await env.detail(run_id)
    assert d["measurement_count"] == 2
