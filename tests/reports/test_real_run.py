"""Reports of a real run: a stage that really runs stress-ng on this machine while it
samples /proc, executed with the real stage runner, judged by the real threshold
engine, assembled the way the agent's local mode does it, written to disk and checked
(OCPTV lines against the official schemas)."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from vetting_core import MemorySink, StageContext, StageFailed, StageSpec, execute_stage
from vetting_core.model import Host, Run, Severity, ThresholdRule
from vetting_reports import build_report, write_reports
from vetting_reports.assemble import record_from_results

from .test_ocptv import check_all, validator  # noqa: F401  (fixture)

pytestmark = pytest.mark.anyio


def cpu_times() -> dict[str, tuple[int, int]]:
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if re.match(r"cpu\d+ ", line):
            name, *vals = line.split()
            nums = list(map(int, vals[:8]))
            idle = nums[3] + nums[4]
            out[name] = (sum(nums) - idle, sum(nums))
    return out


async def stress_stage(ctx: StageContext) -> None:
    """1 s of stress-ng on one CPU while sampling per-CPU utilisation and load."""
    done = anyio.Event()

    async def sample():
        prev = cpu_times()
        while not done.is_set():
            await anyio.sleep(0.05)
            cur = cpu_times()
            for cpu, (busy, total) in cur.items():
                pb, pt = prev.get(cpu, (busy, total))
                if total > pt:
                    ctx.measure("util", cpu, 100.0 * (busy - pb) / (total - pt), "%")
            prev = cur
            ctx.measure("load", "loadavg1", float(Path("/proc/loadavg").read_text().split()[0]))

    async with anyio.create_task_group() as tg:
        tg.start_soon(sample)
        async with ctx.substep("cpu-stressor") as step:
            result = await ctx.run_tool(
                ["stress-ng", "--cpu", "1", "--timeout", "1s", "--metrics-brief"],
                timeout=20,
                artifact="stress-ng",
            )
            text = result.stdout + result.stderr
            m = re.search(r"cpu\s+(\d+)\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+([\d.]+)", text)
            if "successful run completed" not in text or m is None:
                step.fail("stress-ng did not report a successful run")
            else:
                ctx.measure("throughput", "cpu-bogo-ops", float(m.group(2)), "ops/s")
        done.set()
    if not ctx.measurement_count:
        raise StageFailed("no samples")


async def test_reports_of_a_real_stage_run(tmp_path, validator):  # noqa: F811
    spec = StageSpec(name="CPUStress", run=stress_stage, order=400, timeout_s=30)
    sink = MemorySink()
    ctx = StageContext(stage="CPUStress", sink=sink, workdir=tmp_path / "work")
    started = datetime.now(UTC)
    result = await execute_stage(spec, ctx)
    assert result.verdict.value == "passed", result.reason
    rules = [
        ThresholdRule(kind="util", key="cpu*", op="lte", threshold=1000, unit="%"),  # never breached
        ThresholdRule(
            kind="load", key="loadavg1", op="gte", threshold=1000, severity=Severity.warning
        ),  # always
    ]
    record = record_from_results(
        host=Host(id=1, name="localhost", mac="02:00:00:00:00:01"),
        run=Run(
            id=1,
            host_id=1,
            state="Reporting",
            profile="quick",
            non_destructive=True,
            started_at=started,
            completed_at=datetime.now(UTC),
        ),
        results=[result],
        measurements=sink.samples,
        thresholds=rules,
        inventory={"cpu": {"model": "test", "threads": len(cpu_times())}},
    )
    paths = write_reports(record, None, tmp_path / "reports")
    report = json.loads(paths["json"].read_text())

    n_load = sum(1 for m in sink.samples if m.kind == "load")
    assert n_load >= 5
    series = {(s["kind"], s["key"]): s for s in report["series"]}
    assert series[("load", "loadavg1")]["count"] == n_load
    assert series[("throughput", "cpu-bogo-ops")]["min"] > 0
    assert all(0 <= series[("util", c)]["max"] <= 100.5 for c in cpu_times())
    (breach,) = report["breaches"]
    assert breach["key"] == "loadavg1" and breach["count"] == n_load and breach["severity"] == "warning"
    assert report["verdict"] == "passed"  # a warning does not fail the run
    (art,) = report["artifacts"]
    assert art["sha256"] == hashlib.sha256(Path(art["path"]).read_bytes()).hexdigest()
    assert {"util", "load"} <= {c["kind"] for c in report["charts"]}

    html = paths["html"].read_text()
    assert "PASSED" in html and "<svg" in html and "cpu-stressor" in html
    docs = [json.loads(line) for line in paths["ocptv"].read_text().splitlines()]
    check_all(validator, docs)
    assert docs[-1]["testRunArtifact"]["testRunEnd"] == {"status": "COMPLETE", "result": "PASS"}
    assert build_report(record)["summary"]["measurements"] == len(sink.samples)
