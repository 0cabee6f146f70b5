"""The operator's verbs on a held run, and the tables and ``--json`` of the listings,
against a real server process (the agent's side is played over the agent API)."""

from __future__ import annotations

import json

from tests.support.server import ServerProcess


def _fail_and_hold(srv: ServerProcess, run_id: int, tok: str, stage: str, reason: str) -> None:
    r = srv.agent("POST", f"/api/v1/runs/{run_id}/result", tok, json={"stage": stage, "verdict": "failed", "reason": reason})
    assert r.status_code == 200 and r.json()["hold"] is True, r.text
    r = srv.agent("POST", f"/api/v1/runs/{run_id}/hold", tok, json={"ip": "192.0.2.9", "reason": reason})
    assert r.status_code == 200, r.text


def test_retry_stage_override_release_and_the_tables(tmp_path):
    with ServerProcess(tmp_path / "srv") as srv:
        srv.create_host("rack-b4-u12", "aa:bb:cc:00:00:0c", spec_yaml="cpu:\n  threads: 2\n")
        cp = srv.cli("run", "start", "rack-b4-u12", "--stage", "InventoryCheck", "--stage", "Storage", check=True)
        run_id = int(cp.stdout.split()[1])
        tok = cp.stdout.split("agent token (shown once): ")[1].split()[0]
        for call in ("hello", "claim"):
            srv.agent("POST", f"/api/v1/runs/{run_id}/{call}", tok, json={"agent_version": "t", "hostname": "u12"}).raise_for_status()
        srv.agent("POST", f"/api/v1/runs/{run_id}/result", tok, json={"stage": "InventoryCheck", "verdict": "passed"}).raise_for_status()
        _fail_and_hold(srv, run_id, tok, "Storage", "wipe probe found ext4 on sdb")

        # retry the failed stage as it is (e.g. after fixing something on the held machine)
        cp = srv.cli("run", "retry-stage", str(run_id), "--reason", "cable reseated", check=True)
        assert cp.stdout.strip() == f"run {run_id} on rack-b4-u12: retrying Storage; now Running"
        hb = srv.agent("POST", f"/api/v1/runs/{run_id}/heartbeat", tok, json={}).json()
        assert (hb["cmd"], hb["stage"], hb["override_flags"]) == ("retry_stage", "Storage", {})
        srv.agent("POST", f"/api/v1/runs/{run_id}/heartbeat", tok, json={"stage": "Storage"}).raise_for_status()
        _fail_and_hold(srv, run_id, tok, "Storage", "wipe probe found ext4 on sdb")

        # override the gate: the retry carries the flag
        cp = srv.cli("run", "override", str(run_id), "--flag", "wipe=true", "--reason", "disk is scratch", "--json", check=True)
        assert json.loads(cp.stdout)["state"] == "Running"
        hb = srv.agent("POST", f"/api/v1/runs/{run_id}/heartbeat", tok, json={}).json()
        assert (hb["cmd"], hb["stage"], hb["override_flags"]) == ("retry_stage", "Storage", {"wipe": True})
        srv.agent("POST", f"/api/v1/runs/{run_id}/heartbeat", tok, json={"stage": "Storage"}).raise_for_status()
        _fail_and_hold(srv, run_id, tok, "Storage", "fio: 3 read errors on sdb")

        cp = srv.cli("run", "release", str(run_id), "--reason", "disk replaced", check=True)
        assert cp.stdout.strip() == f"run {run_id} on rack-b4-u12: released; now Released"
        events = srv.api("GET", f"/api/v1/runs/{run_id}/events").json()
        audits = [(e["kind"], e["message"]) for e in events if e["kind"].startswith("audit.")]
        assert ("audit.retry_stage", "retry_stage by admin: cable reseated") in audits
        assert ("audit.override", "override by admin: disk is scratch") in audits
        assert ("audit.release", "release by admin: disk replaced") in audits

        # the listings: aligned tables by default, the API's JSON with --json
        table = srv.cli("run", "list", check=True).stdout.splitlines()
        assert table[0].split() == ["ID", "HOST", "STATE", "RESULT", "PROFILE", "STAGE", "STARTED", "REASON"]
        row = table[1]
        assert row.split()[:5] == [str(run_id), "rack-b4-u12", "Released", "fail", "quick"]
        assert table[0].index("STATE") == row.index("Released")  # columns line up
        assert json.loads(srv.cli("run", "list", "--json", check=True).stdout)["items"][0]["id"] == run_id
        hosts = srv.cli("host", "list", check=True).stdout.splitlines()
        assert hosts[0].split()[:4] == ["ID", "NAME", "MAC", "BOOT"] and "aa:bb:cc:00:00:0c" in hosts[1]
        assert hosts[0].index("MAC") == hosts[1].index("aa:bb:cc:00:00:0c")
        assert json.loads(srv.cli("host", "list", "--json", check=True).stdout)[0]["name"] == "rack-b4-u12"
        show = srv.cli("host", "show", "rack-b4-u12", check=True).stdout
        assert "mac            aa:bb:cc:00:00:0c" in show and "  threads: 2" in show and "recent runs:" in show
        shown = json.loads(srv.cli("host", "show", "rack-b4-u12", "--json", check=True).stdout)
        assert shown["expected_spec_yaml"] == "cpu:\n  threads: 2\n" and shown["recent_runs"][0]["id"] == run_id
        detail = srv.cli("run", "show", str(run_id), check=True).stdout
        assert "✘  Storage         failed" in detail and "fio: 3 read errors on sdb" in detail
        assert json.loads(srv.cli("run", "show", str(run_id), "--json", check=True).stdout)["run"]["state"] == "Released"
