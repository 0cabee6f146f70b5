"""The OpenAPI document is the contract (issue 18, item 5): a client written from it works,
it declares what each route needs, and schemathesis, run against a live server with
every check, finds nothing."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime

import jsonschema
import msgspec
import pytest
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from tests.support.server import ServerProcess
from vetting_core.model import Artifact, Measurement, SubStep, Verdict
from vetting_core.protocol import Heartbeat, LogBatch, LogLine, SensorBatch, StageResult

pytestmark = pytest.mark.anyio

SEED = 18
EXAMPLES = 25  # per operation and phase: the run takes about a minute here


async def _doc(env) -> dict:
    r = await env.client.get("/schema/openapi.json")
    assert r.status_code == 200
    return r.json()


def _validator(doc: dict, name: str) -> jsonschema.Draft202012Validator:
    """A validator of one component, resolving its references inside the document."""
    registry = Registry().with_resource("urn:doc", DRAFT202012.create_resource(doc))
    return jsonschema.Draft202012Validator({"$ref": f"urn:doc#/components/schemas/{name}"}, registry=registry)


async def test_what_the_agent_sends_is_what_the_document_describes(env):
    doc = await _doc(env)
    now = datetime.now(UTC)
    sample = Measurement(ts=now, stage="Alpha", kind="temp", key="cpu/0", value=41.5, unit="C")
    bodies = {
        "SensorBatch": SensorBatch(seq=1, samples=[sample]),
        "LogBatch": LogBatch(seq=1, lines=[LogLine(ts=now, stage="Alpha", level="info", message="x")]),
        "Heartbeat": Heartbeat(stage="Alpha", progress=0.5),
        "StageResult": StageResult(stage="Alpha", verdict=Verdict.passed, measurements=[sample],
                                   substeps=[SubStep(stage_name="Alpha", ordinal=0, name="sda")],
                                   artifacts=[Artifact(kind="raw", path="/x", sha256="0" * 64, size_bytes=1)]),
    }
    for name, body in bodies.items():
        _validator(doc, name).validate(msgspec.to_builtins(body))  # the positional form, as sent
    with pytest.raises(jsonschema.ValidationError):  # the object form the old document showed is not it
        _validator(doc, "Measurement").validate({"ts": now.isoformat(), "stage": "a", "kind": "k", "key": "x", "value": 1})
    schemas = doc["components"]["schemas"]
    assert schemas["Measurement"]["type"] == "array" and len(schemas["Measurement"]["prefixItems"]) == 7
    assert schemas["SensorBatch"]["properties"]["seq"] == {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}
    assert schemas["Heartbeat"]["properties"]["progress"]["anyOf"][0] == {"type": "number", "minimum": 0.0, "maximum": 1.0}
    # unknown fields: refused where the Struct forbids them, and only there
    assert schemas["HostCreate"]["additionalProperties"] is False and schemas["RunStart"]["additionalProperties"] is False
    assert "additionalProperties" not in schemas["Hello"]
    assert schemas["RunStart"]["oneOf"] == [{"required": ["host_id"]}, {"required": ["host"]}]
    # a client generated from the document: a sensor batch built from its prefixItems is stored
    run_id, tok = await env.running()
    order = ("ts", "stage", "kind", "key", "value", "unit", "text")
    row = dict(ts=now.isoformat(), stage="Alpha", kind="temp", key="cpu/1", value=40.0, unit="C", text=None)
    r = await env.agent("POST", f"/api/v1/runs/{run_id}/sensor", tok, json={"seq": 1, "samples": [[row[k] for k in order]]})
    assert r.status_code == 200 and r.json()["stored"] == 1, r.text


async def test_security_schemes_are_declared_per_route(env):
    doc = await _doc(env)
    assert {s["scheme"] for s in doc["components"]["securitySchemes"].values()} == {"bearer"}
    sec = {(path, m): op.get("security") for path, item in doc["paths"].items() for m, op in item.items()}
    assert sec[("/api/v1/runs/{run_id}/sensor", "post")] == [{"runToken": []}]
    assert sec[("/api/v1/runs/{run_id}/artifact", "post")] == [{"runToken": []}]
    assert sec[("/api/v1/agents/heartbeat", "post")] == [{"hostToken": []}]
    assert sec[("/api/v1/hosts", "get")] == [{"apiToken": []}] and sec[("/api/v1/runs/{run_id}", "get")] == [{"apiToken": []}]
    for public in (("/healthz", "get"), ("/api/v1/auth/token", "post"), ("/ipxe/{mac}", "get")):
        assert sec[public] == [], public
    assert "429" in doc["paths"]["/api/v1/auth/token"]["post"]["responses"]


async def test_options_allow_lists_every_method_of_the_path(env):
    for path, allow in (("/api/v1/hosts/1", "DELETE, GET, OPTIONS, PATCH"), ("/api/v1/runs", "GET, OPTIONS, POST"),
                        ("/api/v1/runs/1", "GET, OPTIONS"), ("/api/v1/runs/1/heartbeat", "OPTIONS, POST")):
        r = await env.client.options(path)
        assert r.status_code == 204 and r.headers["allow"] == allow, (path, r.status_code, r.headers.get("allow"))


async def test_run_start_takes_exactly_one_of_host_id_and_host(env):
    h = await env.create_host()
    for body in ({"host_id": h["id"], "host": "node1"}, {"profile": "srvtest"}, {"host_id": None, "host": "node1"}):
        r = await env.op("POST", "/api/v1/runs", json={**body, "profile": "srvtest"})
        assert r.status_code in (400, 422) and r.json()["extra"]["field"] in ("host_id", "$.host_id"), r.text
    r = await env.op("POST", "/api/v1/runs", json={"host_id": float(h["id"]), "profile": "srvtest"})  # 3.0 is an integer
    assert r.status_code == 201, r.text


def _schemathesis(srv: ServerProcess, tmp_path, name: str, config: str, *args: str) -> str:
    path = tmp_path / f"{name}.toml"
    path.write_text(config)
    t = time.monotonic()
    cp = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--config-file", str(path), "run", f"{srv.base_url}/schema/openapi.json",
         "--checks", "all", "--seed", str(SEED), "--max-examples", str(EXAMPLES), "--workers", "1",
         "--phases", "examples,coverage,fuzzing,stateful", "--request-timeout", "20", *args],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    took = time.monotonic() - t
    found = cp.stdout[cp.stdout.find("= FAILURES ="):][:30000]
    assert cp.returncode == 0, f"schemathesis found something ({name}, seed {SEED}, {took:.0f} s):\n{found}\n{cp.stderr[-3000:]}"
    lines = cp.stdout.splitlines()
    summary = [ln for ln in lines if "generated" in ln or "No issues found" in ln]
    return f"{name}: {took:.0f} s, {' / '.join(x.strip() for x in summary)}"


# schema-valid requests may still be refused for what a schema cannot say: no such run or
# host (404), a conflict with the run's state or a duplicate (409), a semantic check such
# as a MAC that is not a unicast address or an artifact's SHA-256 (422), the login's rate
# limit (429), a batch named by a result not yet stored (503). A 400 for schema-valid data
# is a finding. Schema-violating requests: schemathesis's own list, and 413 (a body made
# invalid by its size is refused by its size first).
ACCEPTED = """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "401", "403", "404", "409", "422", "429", "503"]
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]
"""


@pytest.mark.slow
def test_schemathesis_finds_nothing(tmp_path, database_url):
    """Every check, every phase (stateful included), with a fixed seed and example budget,
    on both route families, each in its own run (so that fuzzing one cannot take the
    other's state away: an operator's cancel would end the agents' run): the agent routes
    with a live run's token and id (the hot ones answered by EdgeProtocol), then the
    operator and public routes with an API token (ids from the stateful phase's links, or
    random). Both engines: text PostgreSQL cannot store was a 500 there only."""
    srv = ServerProcess(tmp_path / "srv", database_url=database_url,
                        settings={"logging": {"level": "warning"}, "peers": {"iperf3_ports": ""}})
    with srv:
        host = srv.create_host("st-node", "aa:bb:cc:00:00:01")
        run_id, tok = srv.start_run(host["id"], stages=["InventoryCheck", "CPUStress"])
        for step in ("hello", "claim"):
            srv.agent("POST", f"/api/v1/runs/{run_id}/{step}", tok, json={"agent_version": "t", "hostname": "st-node"}).raise_for_status()
        # host-mode polling with the token of a host without a run (a poll for a host with a
        # run in progress hands out a fresh run token: the agent routes' one would stop working)
        idle = srv.create_host("st-idle", "aa:bb:cc:00:00:02", boot_provider="agent")
        agent = _schemathesis(srv, tmp_path, "agent", f"""
[auth.openapi]
runToken = {{ bearer = "{tok}" }}
hostToken = {{ bearer = "{idle['agent_token']}" }}
[parameters]
run_id = {run_id}
{ACCEPTED}""", "--include-tag", "agent")
        # the operator's; an endless server-sent-event stream is left out (no response ever completes)
        operator = _schemathesis(srv, tmp_path, "operator", f"""
[auth.openapi]
apiToken = {{ bearer = "{srv.token}" }}
{ACCEPTED}""", "--exclude-tag", "agent", "--exclude-path", "/api/v1/events/stream")
        print(f"schemathesis seed {SEED}, {EXAMPLES} examples per operation and phase\n{agent}\n{operator}")
        assert "Traceback" not in srv.log_tail(400), srv.log_tail(400)
