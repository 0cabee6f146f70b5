"""Local mode: the pipeline on this machine without an orchestrator, judged and reported."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from vetting_agent.local import LocalOptions, run_local
from vetting_agent.sidecar import HwmonSource
from vetting_core.profiles import ProfileError

from .test_agent_units import _fake_hwmon

SPEC = """
description: test box
params:
  Judged: {value: 50}
  Chatter: {samples: 30, lines: 12, duration_s: 0.3}
thresholds:
  - {stage: Chatter, kind: temp, key: "*", op: lte, threshold: 90, severity: critical}
"""


@pytest.mark.anyio
async def test_local_mode_judges_samples_and_writes_reports(bare_registry, tmp_path):
    hw = tmp_path / "hwmon"
    _fake_hwmon(hw)
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    out = tmp_path / "out"
    progress = io.StringIO()
    outcome = await run_local(
        bare_registry,
        LocalOptions(
            profile="agenttest",
            out_dir=out,
            spec_path=spec,
            stages=["Chatter", "Judged", "NeedsGpu"],
            keep_going=True,
            sidecar_sources=[HwmonSource(hw)],
            sensor_interval_s=0.05,
            progress_stream=progress,
        ),
    )
    stages = {s.name: s for s in outcome.record.stages}
    assert stages["Chatter"].state.value == "passed"
    assert stages["Chatter"].summary == {"samples": 30, "lines": 12}
    # the plugin passed, but 50 breaches the stage's critical "lte 10": failed
    assert stages["Judged"].state.value == "failed"
    assert "judged/value = 50.0 breaches lte 10.0" in stages["Judged"].reason
    assert stages["NeedsGpu"].state.value == "skipped" and stages["NeedsGpu"].reason == "no GPU in the inventory"
    assert not outcome.passed and outcome.exit_code == 1 and outcome.failed_stage == "Judged"
    # stage samples + sidecar samples (tagged with the running stage) are all kept
    kinds = {(m.stage, m.kind) for m in outcome.record.measurements}
    assert ("Chatter", "chatter") in kinds and ("Chatter", "temp") in kinds
    assert sum(1 for m in outcome.record.measurements if m.kind == "chatter") == 30
    assert [e.kind for e in outcome.record.evaluations] == ["judged"]
    assert any(r.source == "host_override" for r in outcome.record.thresholds)
    text = progress.getvalue()
    assert "[1/3] Chatter" in text and "PASSED" in text and "FAILED at Judged" in text
    assert (out / "agent.log").read_text().count("chatter line") == 12
    report = json.loads(Path(outcome.reports["json"]).read_text())
    assert report  # written by vetting_reports
    assert Path(outcome.reports["html"]).exists()


@pytest.mark.anyio
async def test_local_mode_stops_at_the_first_failure_like_the_orchestrator(bare_registry, tmp_path):
    outcome = await run_local(
        bare_registry,
        LocalOptions(profile="agenttest", out_dir=tmp_path, stages=["Faulty", "Flags"], sidecar=False,
                     progress_stream=io.StringIO()),
    )
    stages = {s.name: s for s in outcome.record.stages}
    assert stages["Faulty"].state.value == "failed"
    assert stages["Faulty"].reason == "the faulty stage failed on purpose"
    assert stages["Flags"].state.value == "pending"  # never started
    assert outcome.record.run.failed_stage == "Faulty"


@pytest.mark.anyio
async def test_local_mode_refuses_unknown_profiles_and_stages(bare_registry, tmp_path):
    with pytest.raises(ProfileError, match="unknown profile 'nope'"):
        await run_local(bare_registry, LocalOptions(profile="nope", out_dir=tmp_path, sidecar=False))
    with pytest.raises(ProfileError, match="not part of profile 'deep'"):
        await run_local(bare_registry, LocalOptions(profile="deep", stages=["Chatter"], out_dir=tmp_path, sidecar=False))


def test_local_cli_with_real_inventory_stage(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "vetting_agent.cli", "--log-level", "error", "local", "--profile", "quick",
         "--stages", "InventoryCheck", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "InventoryCheck" in proc.stdout and "result: PASSED" in proc.stdout
    record = json.loads((out / "record.json").read_text())
    assert record["inventory"]["cpu"]["threads"] >= 1
    bad = subprocess.run(
        [sys.executable, "-m", "vetting_agent.cli", "--log-level", "error", "local", "--profile", "quick",
         "--spec", str(tmp_path / "missing.yaml"), "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert bad.returncode == 2 and "missing.yaml" in bad.stderr
    spec = tmp_path / "bad-threshold.yaml"
    spec.write_text("thresholds:\n  - {kind: temp, op: nosuchop, threshold: 3}\n")
    bad = subprocess.run(
        [sys.executable, "-m", "vetting_agent.cli", "--log-level", "error", "local", "--profile", "quick",
         "--stages", "InventoryCheck", "--spec", str(spec), "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert bad.returncode == 2 and "unknown threshold operator 'nosuchop'" in bad.stderr
    inv = subprocess.run(
        [sys.executable, "-m", "vetting_agent.cli", "--log-level", "error", "inventory"],
        capture_output=True, text=True, timeout=120,
    )
    assert inv.returncode == 0 and json.loads(inv.stdout)["cpu"]["threads"] == record["inventory"]["cpu"]["threads"]
    usage = subprocess.run([sys.executable, "-m", "vetting_agent.cli", "connect", "--server", "http://x", "--run", "0"],
                           capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "must be positive" in usage.stderr


def test_local_cli_spec_mismatch_fails_at_spec_validate_with_the_diff(tmp_path):
    # this machine's real inventory against a spec it cannot meet: 4096 logical CPUs
    import os

    spec = tmp_path / "spec.yaml"
    spec.write_text("cpu:\n  threads: 4096\n")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "vetting_agent.cli", "--log-level", "error", "local", "--profile", "quick",
         "--stages", "InventoryCheck,SpecValidate", "--spec", str(spec), "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "FAILED at SpecValidate" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    diffs = {d["field"]: d for d in report["spec_diffs"]}
    assert diffs["cpu.threads"]["severity"] == "critical"
    assert diffs["cpu.threads"]["expected"] in (4096, "4096") and str(os.cpu_count()) in str(diffs["cpu.threads"]["actual"])
    stages = {s["name"]: s for s in report["stages"]}
    assert stages["SpecValidate"]["verdict"] == "failed" and "cpu.threads" in stages["SpecValidate"]["reason"]
    # the OCPTV export names the real command: this agent's argv
    start = json.loads((out / "report.ocptv.jsonl").read_text().splitlines()[1])["testRunArtifact"]["testRunStart"]
    assert start["commandLine"] == (
        f"vetting-agent --log-level error local --profile quick --stages InventoryCheck,SpecValidate --spec {spec} --out {out}"
    )
