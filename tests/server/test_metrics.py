"""``GET /metrics``: a real server process scraped after real agent traffic, parsed with
prometheus-client's own parser (what Prometheus reads)."""

from __future__ import annotations

import time

from prometheus_client.parser import text_string_to_metric_families

from tests.notifiers.receivers import WEBHOOK_SECRET, HttpReceiver
from tests.support.server import ServerProcess

TS = "2026-11-23T01:00:00Z"


def scrape(srv: ServerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = srv.agent("GET", "/metrics", None)  # no token: Prometheus scrapes without one
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(r.text)
        for s in fam.samples
    }


def test_metrics_after_real_traffic(tmp_path):
    hooks = HttpReceiver().start()
    settings = {
        "notifications": {
            "targets": [
                {"name": "cmdb", "kind": "webhook", "config": {"url": f"{hooks.base}/hook/x", "secret": WEBHOOK_SECRET}},
                {"name": "broken", "kind": "webhook", "retries": 0,
                 "config": {"url": f"{hooks.base}/fail/x", "secret": WEBHOOK_SECRET}},
            ],
            "routes": [{"events": ["*"], "targets": ["cmdb", "broken"]}],
        },
    }
    try:
        with ServerProcess(tmp_path / "srv", settings=settings) as srv:
            before = scrape(srv)
            assert before[("vetting_runs", (("state", "Running"),))] == 0
            assert before[("vetting_ingest_samples_total", ())] == 0
            host = srv.create_host("n1", "aa:bb:cc:00:00:01")
            run_id, tok = srv.start_run(host["id"], stages=["InventoryCheck", "CPUStress"])
            srv.agent("POST", f"/api/v1/runs/{run_id}/hello", tok, json={"agent_version": "t", "hostname": "n1"})
            srv.agent("POST", f"/api/v1/runs/{run_id}/claim", tok, json={"agent_version": "t", "hostname": "n1"})
            for rtt in (None, 0.004, 0.2):
                r = srv.agent("POST", f"/api/v1/runs/{run_id}/heartbeat", tok,
                              json={"stage": "InventoryCheck", "progress": 0.5, "last_rtt_s": rtt})
                assert r.status_code == 200
            for seq in (1, 2, 2):  # the second 2 is a retry: stored once
                r = srv.agent("POST", f"/api/v1/runs/{run_id}/sensor", tok, json={
                    "seq": seq, "samples": [[TS, "InventoryCheck", "temp", f"cpu/{i}", 40.0, "C", None] for i in range(50)]})
                assert r.status_code == 200
            r = srv.agent("POST", f"/api/v1/runs/{run_id}/log", tok, json={
                "seq": 1, "lines": [[TS, "InventoryCheck", "info", f"line {i}"] for i in range(7)]})
            assert r.status_code == 200
            r = srv.agent("POST", f"/api/v1/runs/{run_id}/result", tok, json={
                "stage": "InventoryCheck", "verdict": "passed", "started_at": "2026-11-23T01:00:00Z",
                "completed_at": "2026-11-23T01:00:42Z", "sensor_seq": 2, "log_seq": 1})
            assert r.status_code == 200, r.text
            r = srv.agent("POST", f"/api/v1/runs/{run_id}/result", tok, json={
                "stage": "CPUStress", "verdict": "failed", "reason": "stress-ng: 2 workers failed",
                "sensor_seq": 2, "log_seq": 1})  # fails the run: a StageFailed notification to both targets
            assert r.status_code == 200, r.text
            assert hooks.wait_for("/hook/", 1, timeout=20)
            deadline = time.monotonic() + 20
            while True:
                m = scrape(srv)
                if m.get(("vetting_notifications_total", (("outcome", "failed"), ("target", "broken")))) or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
    finally:
        hooks.stop()
    assert m[("vetting_runs", (("state", "Failed"),))] == 1
    assert m[("vetting_runs", (("state", "Running"),))] == 0
    assert m[("vetting_agents_connected", (("mode", "run"),))] == 1
    assert m[("vetting_ingest_samples_total", ())] == 100
    assert m[("vetting_ingest_batches_total", (("stream", "sensor"),))] == 2
    assert m[("vetting_ingest_batches_total", (("stream", "log"),))] == 1
    assert m[("vetting_ingest_log_lines_total", ())] == 7
    assert m[("vetting_ingest_duplicate_batches_total", ())] == 1
    assert m[("vetting_ingest_groups_total", ())] >= 1
    assert m[("vetting_ingest_group_commit_seconds_count", ())] == m[("vetting_ingest_groups_total", ())]
    assert m[("vetting_ingest_writer_queue_depth", ())] == 0
    # two heartbeats reported their previous round trip: 4 ms and 200 ms
    assert m[("vetting_heartbeat_latency_seconds_count", ())] == 2
    assert m[("vetting_heartbeat_latency_seconds_bucket", (("le", "0.005"),))] == 1
    assert abs(m[("vetting_heartbeat_latency_seconds_sum", ())] - 0.204) < 1e-9
    assert m[("vetting_stage_duration_seconds_count", (("stage", "InventoryCheck"), ("verdict", "passed")))] == 1
    assert m[("vetting_stage_duration_seconds_sum", (("stage", "InventoryCheck"), ("verdict", "passed")))] == 42.0
    assert m[("vetting_stage_duration_seconds_count", (("stage", "CPUStress"), ("verdict", "failed")))] == 1
    assert m[("vetting_notifications_total", (("outcome", "delivered"), ("target", "cmdb")))] >= 1
    assert m[("vetting_notifications_total", (("outcome", "failed"), ("target", "broken")))] >= 1
