"""CPUStress: stress-ng compute stressors with verification, judged per stressor.

Parameters (per profile; host overrides on top):

- ``stressors``: ``{stressor: instances}`` (0 = one per online CPU), run together.
- ``options``: extra stress-ng options (e.g. ``["--cpu-method", "matrixprod"]``).
- ``duration_s``: run length.
- ``nominal``: ``{stressor: bogo-ops/s}`` expected on this hardware; the host's spec
  may carry the same under ``performance.stress_ng``. Params win.
- ``min_ratio``: a stressor below this fraction of its nominal fails.

Throttling: the kernel's thermal-throttle counters are sampled before and after
(``cpu_throttle``/``cpuN/core_throttle_count``, judged ``delta_lte 0``): a CPU
that throttles under load is a finding even when every stressor passed; with
``fail_on_throttle`` (default) it fails the stage outright. ``cpu_sysfs`` is where the
counters are read (default ``/sys/devices/system/cpu``).
"""

from __future__ import annotations

from vetting_core.context import StageContext, StageFailed, StageSkipped
from vetting_core.model import Severity, ThresholdRule
from vetting_core.records import StageSpec

from .runner import run_stress_ng
from .sysfs import throttle_counters


def _nominal(ctx: StageContext) -> dict[str, float]:
    nominal: dict[str, float] = {}
    perf = ((ctx.spec or {}).get("performance") or {}).get("stress_ng") or {}
    if isinstance(perf, dict):
        nominal.update({str(k): float(v) for k, v in perf.items()})
    nominal.update({str(k): float(v) for k, v in (ctx.params.get("nominal") or {}).items()})
    return nominal


async def run(ctx: StageContext) -> None:
    stressors = dict(ctx.params.get("stressors") or {"cpu": 0})
    duration = float(ctx.params.get("duration_s", 45))
    sysfs = str(ctx.params.get("cpu_sysfs", "/sys/devices/system/cpu"))
    before = throttle_counters(sysfs)
    for key, value in before.items():
        ctx.measure("cpu_throttle", key, value, "events")
    if not before:
        ctx.log("no thermal_throttle counters in sysfs (virtual machine or unsupported CPU)")
    ctx.progress(0.0, f"stress-ng {', '.join(stressors)} for {duration:.0f}s")
    verdict = await run_stress_ng(
        ctx,
        stressors,
        duration_s=duration,
        options=[str(o) for o in ctx.params.get("options", [])],
        tag="cpu",
        nominal=_nominal(ctx),
        min_ratio=ctx.params.get("min_ratio"),
    )
    after = throttle_counters(sysfs)
    throttled = {}
    for key, value in after.items():
        ctx.measure("cpu_throttle", key, value, "events")
        if key in before and value > before[key]:
            throttled[key] = value - before[key]
    if throttled:
        ctx.summary["throttled"] = throttled
        ctx.log(f"CPU throttled during the run: {throttled}", level="warning")
    ctx.progress(1.0, verdict.verdict)
    if verdict.verdict == "failed":
        raise StageFailed(verdict.reason)
    if verdict.verdict == "skipped":
        raise StageSkipped(verdict.reason)
    if throttled and ctx.params.get("fail_on_throttle", True):
        n = sum(throttled.values())
        raise StageFailed(f"CPU thermal throttling under load: {n} events on {len(throttled)} counters")


STAGE = StageSpec(
    name="CPUStress",
    run=run,
    order=400,
    description="stress-ng compute stressors with --verify; bogo-ops/s against nominal; throttling.",
    params={
        "*": {
            "stressors": {"cpu": 0},
            "options": ["--cpu-method", "matrixprod"],
            "min_ratio": 0.85,
            "fail_on_throttle": True,
        },
        "quick": {"duration_s": 45},
        "deep": {
            "duration_s": 900,
            "stressors": {"cpu": 0, "matrix": 0},
            "options": ["--cpu-method", "all"],
        },
        "soak": {"duration_s": 1800, "stressors": {"cpu": 0, "matrix": 0}, "options": ["--cpu-method", "all"]},
    },
    thresholds=(
        ThresholdRule(kind="stress_ng", key="*/nominal_ratio", op="gte", threshold=0.85, unit="ratio"),
        ThresholdRule(kind="cpu_throttle", key="*", op="delta_lte", threshold=0, unit="events",
                      severity=Severity.warning),
        ThresholdRule(kind="temperature", key="stress_ng/*", op="lte", threshold=95.0, unit="°C",
                      severity=Severity.warning),
    ),
    timeout_s=3 * 3600.0,
)
