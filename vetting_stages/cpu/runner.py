"""Run stress-ng inside a stage: argv, stream, keep the log and YAML, judge, record.

Shared by CPUStress, Memory and Burn so that all three read stress-ng the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from vetting_core.context import StageContext

from .stressng import Judgement, StressNgParseError, build_argv, judge, parse_log, parse_thermal_log, parse_yaml

GRACE_S = 60.0  # stress-ng needs a moment past --timeout to reap workers and write YAML


async def run_stress_ng(
    ctx: StageContext,
    stressors: Mapping[str, int],
    *,
    duration_s: float,
    options: Iterable[str] = (),
    tag: str = "stress-ng",
    nominal: Mapping[str, float] | None = None,
    min_ratio: float | None = None,
    substeps: bool = True,
    allow_zero_work: bool = False,
) -> Judgement:
    """Run one stress-ng invocation and return its judgement.

    Records ``stress_ng`` samples (``<stressor>/bogo_ops_per_s`` and, with a nominal,
    ``<stressor>/nominal_ratio``), thermal-zone temperatures stress-ng read during the
    run (``temperature``/``stress_ng/<stressor>/<zone>``), and one sub-step per
    stressor unless ``substeps`` is false. A stressor below ``min_ratio`` of its
    nominal fails its sub-step; so does one that completed no bogo-op at all (nothing
    was verified), unless ``allow_zero_work``.
    """
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    yaml_path = Path(ctx.workdir) / f"{tag}.yaml"
    yaml_path.unlink(missing_ok=True)
    argv = build_argv(stressors, duration_s=duration_s, yaml_path=str(yaml_path), options=options)
    # stress-ng missing: ToolNotFound ends the stage cannot_run (not a CPU finding)
    result = await ctx.run_tool(argv, timeout=duration_s + GRACE_S, stream=True)
    text = "\n".join(filter(None, [result.stdout, result.stderr]))
    ctx.save_text(f"{tag}-log", f"{tag}.log", text)
    report = None
    if yaml_path.exists():
        ctx.artifact(f"{tag}-yaml", yaml_path)
        try:
            report = parse_yaml(yaml_path.read_text())
        except StressNgParseError as exc:
            ctx.log(f"stress-ng YAML unreadable: {exc}", level="warning")
    names = list(stressors)
    summary = parse_log(text, names)
    verdict = judge(names, result.returncode, summary, report, timed_out=result.timed_out)

    thermal = report.thermal if report and report.thermal else parse_thermal_log(text)
    for stressor, zones in thermal.items():
        for zone, celsius in zones.items():
            ctx.measure("temperature", f"stress_ng/{stressor}/{zone}", celsius, "°C")
    if not thermal:
        ctx.log("stress-ng read no thermal zones on this machine", level="debug")

    nominal = dict(nominal or {})
    out: dict[str, dict] = {}
    for name, outcome in verdict.stressors.items():
        entry: dict = {"verdict": outcome.verdict}
        if outcome.reason:
            entry["reason"] = outcome.reason
        m = outcome.metrics
        ratio_fail = None
        if m is not None and outcome.verdict == "passed" and m.bogo_ops <= 0:
            if allow_zero_work:
                ctx.log(f"{name}: stress-ng completed no bogo-op in {duration_s:.0f}s", level="warning")
                entry["zero_work"] = True
            else:
                ratio_fail = f"completed no bogo-op in {duration_s:.0f}s: nothing was verified"
        if m is not None and outcome.verdict == "passed":
            ctx.measure("stress_ng", f"{name}/bogo_ops_per_s", m.bogo_ops_per_s_real, "bogo-ops/s")
            entry["bogo_ops_per_s"] = round(m.bogo_ops_per_s_real, 3)
            entry["cpu_pct_per_instance"] = round(m.cpu_pct_per_instance, 1)
            if name in nominal and nominal[name] > 0:
                ratio = m.bogo_ops_per_s_real / float(nominal[name])
                ctx.measure("stress_ng", f"{name}/nominal_ratio", ratio, "ratio")
                entry["nominal"] = nominal[name]
                entry["nominal_ratio"] = round(ratio, 4)
                if min_ratio is not None and ratio < min_ratio:
                    ratio_fail = (
                        f"{m.bogo_ops_per_s_real:.1f} bogo-ops/s is {ratio:.0%} of nominal "
                        f"{nominal[name]:.1f} (minimum {min_ratio:.0%})"
                    )
        out[name] = entry
        if substeps:
            async with ctx.substep(f"{tag}:{name}") as step:
                step.summary.update(entry)
                if outcome.verdict == "failed":
                    step.fail(outcome.reason or verdict.reason)
                elif outcome.verdict == "skipped":
                    step.skip(outcome.reason)
                elif ratio_fail:
                    step.fail(ratio_fail)
        if ratio_fail and verdict.verdict == "passed":
            verdict.verdict, verdict.reason = "failed", f"{name}: {ratio_fail}"
    ctx.summary.setdefault("stress_ng", {})[tag] = {
        "argv": argv,
        "returncode": result.returncode,
        "verdict": verdict.verdict,
        "stressors": out,
        "version": report.version if report else None,
    }
    return verdict
