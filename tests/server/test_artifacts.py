"""Artifact uploads: checked against their SHA-256, stored once, listed with the run."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from .conftest import Env, create_operator_token, make_settings, serve_in_process

pytestmark = pytest.mark.anyio


def upload(content: bytes, *, stage: str | None = "Alpha", sha: str | None = None, name: str = "/tmp/wd/smartctl-sda.json") -> dict:
    return {
        "artifact": {"kind": "smartctl", "path": name, "sha256": sha or hashlib.sha256(content).hexdigest(),
                     "size_bytes": len(content), "stage": stage},
        "content": base64.b64encode(content).decode(),
    }


async def test_upload_is_verified_stored_once_and_replaces_the_agent_copy(env):
    run_id, tok = await env.running()
    content = b'{"smartctl": {"exit_status": 0}, "device": {"name": "/dev/sda"}}\n' * 100
    r = await env.agent("POST", f"/api/v1/runs/{run_id}/artifact", tok, json=upload(content))
    assert r.status_code == 200, r.text
    assert r.json() == {"sha256": hashlib.sha256(content).hexdigest(), "stored": True}
    again = await env.agent("POST", f"/api/v1/runs/{run_id}/artifact", tok, json=upload(content))
    assert again.json()["stored"] is False  # a retried upload is stored once

    damaged = await env.agent("POST", f"/api/v1/runs/{run_id}/artifact", tok,
                              json=upload(content, sha=hashlib.sha256(b"other").hexdigest()))
    assert damaged.status_code == 422 and "the upload is damaged" in damaged.json()["detail"]
    unknown = await env.agent("POST", f"/api/v1/runs/{run_id}/artifact", tok, json=upload(content, stage="Nope"))
    assert unknown.status_code == 409 and "no stage 'Nope'" in unknown.json()["detail"]
    garbled = await env.agent("POST", f"/api/v1/runs/{run_id}/artifact", tok, json={**upload(content), "content": "not base64!"})
    assert garbled.status_code == 400 and garbled.json()["detail"]
    hostile = await env.agent("POST", f"/api/v1/runs/{run_id}/artifact", tok, json=upload(b"x", name="../../../etc/passwd"))
    assert hostile.status_code == 200

    # the result that lists it: no second row with the agent's path
    art = upload(content)["artifact"]
    r = await env.agent("POST", f"/api/v1/runs/{run_id}/result", tok, json={
        "stage": "Alpha", "verdict": "passed", "artifacts": [art, {**art, "sha256": "ab" * 32, "path": "/tmp/wd/big.bin",
                                                                    "size_bytes": 1 << 30}]})
    assert r.status_code == 200, r.text
    d = await env.detail(run_id)
    rows = [a for a in d["artifacts"] if a["kind"] == "smartctl"]
    by_sha = {a["sha256"]: a for a in rows}
    stored = by_sha[hashlib.sha256(content).hexdigest()]
    assert len(rows) == 3 and stored["location"] == "server" and stored["stage"] == "Alpha"
    assert Path(stored["path"]).read_bytes() == content
    data_dir = env.rt.data_dir
    assert Path(stored["path"]).resolve().is_relative_to(data_dir / "artifacts" / f"run-{run_id}")
    assert by_sha["ab" * 32]["location"] == "agent"  # too big to upload: listed where it is
    passwd = by_sha[hashlib.sha256(b"x").hexdigest()]
    assert Path(passwd["path"]).resolve().is_relative_to(data_dir) and Path(passwd["path"]).name.endswith("passwd")


async def test_artifacts_over_the_limit_are_refused(database_url, tmp_path, test_registry):
    from vetting_server.app import create_app

    app = create_app(make_settings(database_url, tmp_path, server={"max_artifact_bytes": 1000}), registry=test_registry)
    async with serve_in_process(app) as client:
        env = Env(app, client, await create_operator_token(app.state.rt))
        run_id, tok = await env.running()
        r = await env.agent("POST", f"/api/v1/runs/{run_id}/artifact", tok, json=upload(b"y" * 1001))
        assert r.status_code == 422 and "server.max_artifact_bytes" in r.json()["detail"]
        claim = await env.agent("POST", f"/api/v1/runs/{run_id}/claim", tok, json={"agent_version": "t", "hostname": "n"})
        assert claim.json()["max_artifact_bytes"] == 1000  # the agent knows not to send larger ones
        huge = await env.agent("POST", f"/api/v1/runs/{run_id}/artifact", tok, json=upload(b"z" * 200_000))
        assert huge.status_code == 413
