"""Artifacts an agent sends are data, never a say over what the server serves (issue 18,
item 1): the server's own kinds are refused from agents, downloads serve only files the
server stored under its data directory, a run that is no longer Running takes no upload,
and a run's uploads have a quota (both engines)."""

from __future__ import annotations

import base64
import hashlib

import pytest

from vetting_server.db.database import utcnow

pytestmark = pytest.mark.anyio


@pytest.fixture
def settings_overrides():
    return {"server": {"max_run_artifacts": 3, "max_run_artifact_bytes": 1000}}


def upload(content: bytes, kind: str = "smartctl", name: str = "/tmp/wd/out.json") -> dict:
    return {
        "artifact": {"kind": kind, "path": name, "sha256": hashlib.sha256(content).hexdigest(),
                     "size_bytes": len(content), "stage": "Alpha"},
        "content": base64.b64encode(content).decode(),
    }


async def test_server_kinds_are_refused_from_agents(env):
    run_id, tok = await env.running()
    for kind in ("hold_key", "report", "report_html", "report_ocptv"):
        r = await env.agent("POST", f"/api/v1/runs/{run_id}/artifact", tok, json=upload(b"<script>x</script>", kind=kind))
        assert r.status_code == 422, (kind, r.text)
        assert r.json()["extra"] == {"field": "artifact.kind"}
        listed = {"kind": kind, "path": "/etc/passwd", "sha256": "0" * 64, "size_bytes": 1}
        r = await env.agent("POST", f"/api/v1/runs/{run_id}/result", tok, json={
            "stage": "Alpha", "verdict": "failed", "artifacts": [{**listed, "kind": "raw"}, listed]})
        assert r.status_code == 422, (kind, r.text)
        assert r.json()["extra"] == {"field": "artifacts[1].kind"}
    d = await env.detail(run_id)
    assert d["artifacts"] == [] and d["run"]["state"] == "Running"
    assert (await env.op("GET", f"/api/v1/runs/{run_id}/hold-key")).status_code == 404
    assert (await env.op("GET", f"/api/v1/runs/{run_id}/report/html")).status_code == 404


async def test_downloads_serve_only_files_the_server_stored_under_its_data_dir(env, tmp_path):
    run_id, tok = await env.running()
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0\n")
    inside_other = env.rt.data_dir / "holds" / "run-999" / "id_ed25519"  # another run's key
    inside_other.parent.mkdir(parents=True)
    inside_other.write_text("PRIVATE KEY of run 999\n")
    link = env.rt.data_dir / "holds" / f"run-{run_id}" / "id_ed25519"
    link.parent.mkdir(parents=True)
    link.symlink_to(secret)  # a path that looks right but resolves outside
    rows = [
        ("hold_key", str(secret), "server"), ("hold_key", str(inside_other), "server"), ("hold_key", str(link), "server"),
        ("report_html", str(secret), "server"), ("report_html", str(inside_other), "server"),
        ("report_html", str(env.rt.data_dir / "reports" / f"run-{run_id}" / ".." / ".." / "holds" / "run-999" / "id_ed25519"), "server"),
    ]
    for kind, path, location in rows:  # rows a hostile agent (or an older server) could have left
        async with env.rt.db.transaction() as tx:
            await tx.execute(
                "INSERT INTO artifacts (run_id, stage_id, kind, path, sha256, size_bytes, location, created_at) "
                "VALUES ($1, NULL, $2, $3, $4, 1, $5, $6)", run_id, kind, path, "0" * 64, location, utcnow(),
            )
        for url in (f"/api/v1/runs/{run_id}/hold-key", f"/api/v1/runs/{run_id}/report/html"):
            r = await env.op("GET", url)
            assert r.status_code == 404, (kind, path, url, r.status_code)
            assert "root:x" not in r.text and "PRIVATE KEY" not in r.text
    # the real thing still works: a hold the server opened
    r = await env.agent("POST", f"/api/v1/runs/{run_id}/result", tok, json={"stage": "Alpha", "verdict": "failed", "reason": "x"})
    assert r.status_code == 200, r.text
    link.unlink()
    r = await env.agent("POST", f"/api/v1/runs/{run_id}/hold", tok, json={"ip": "10.0.0.9"})
    assert r.status_code == 200, r.text
    r = await env.op("GET", f"/api/v1/runs/{run_id}/hold-key")
    assert r.status_code == 200 and "PRIVATE KEY" in r.text and "run 999" not in r.text


async def test_no_upload_once_the_run_is_not_running(env):
    run_id, tok = await env.running()
    r = await env.agent("POST", f"/api/v1/runs/{run_id}/result", tok, json={"stage": "Alpha", "verdict": "failed", "reason": "x"})
    assert r.status_code == 200 and r.json()["next_state"] == "Failed", r.text
    r = await env.agent("POST", f"/api/v1/runs/{run_id}/artifact", tok, json=upload(b"late"))
    assert r.status_code == 409 and "Failed" in r.json()["detail"], r.text
    assert [a for a in (await env.detail(run_id))["artifacts"] if a["kind"] == "smartctl"] == []


async def test_per_run_quota_count_and_bytes(env):
    run_id, tok = await env.running()
    for i in range(3):
        r = await env.agent("POST", f"/api/v1/runs/{run_id}/artifact", tok, json=upload(b"%d" % i * 100, name=f"/w/{i}"))
        assert r.status_code == 200, r.text
    r = await env.agent("POST", f"/api/v1/runs/{run_id}/artifact", tok, json=upload(b"x", name="/w/4"))
    assert r.status_code == 413 and "max_run_artifacts" in r.json()["detail"], r.text
    again = await env.agent("POST", f"/api/v1/runs/{run_id}/artifact", tok, json=upload(b"0" * 100, name="/w/0"))
    assert again.status_code == 200 and again.json()["stored"] is False  # a retry is not a new file

    other, tok2 = await env.running("node2", "aa:bb:cc:00:00:02")
    r = await env.agent("POST", f"/api/v1/runs/{other}/artifact", tok2, json=upload(b"y" * 900, name="/w/a"))
    assert r.status_code == 200, r.text
    r = await env.agent("POST", f"/api/v1/runs/{other}/artifact", tok2, json=upload(b"z" * 200, name="/w/b"))
    assert r.status_code == 413 and "max_run_artifact_bytes" in r.json()["detail"], r.text
    files = list((env.rt.data_dir / "artifacts" / f"run-{other}").rglob("*"))
    assert [f.name for f in files if f.is_file()] == [f"{hashlib.sha256(b'y' * 900).hexdigest()[:12]}-a"]
