"""Memory: stress-ng ``--vm`` with ``--verify`` over an OOM-safe share of free memory.

Parameters: ``duration_s``; ``workers`` (0 = one per online CPU); ``fraction`` of
the memory above the reserve to stress; ``reserve_min_bytes`` / ``reserve_pct``
(the reserve is the larger of the two); ``max_bytes`` (optional cap); ``options``
(extra stress-ng options, default ``--vm-keep --vm-method all``);
``watchdog_interval_s`` and ``watchdog_floor_pct`` (share of the reserve below
which MemAvailable must not fall while the run goes on).

Evidence recorded: ``memory``/``mem_available_bytes`` while running, the kernel
``oom_kill`` counter before/after (``memory``/``oom_kill``, ``delta_lte 0``), EDAC
corrected/uncorrected counters per controller (``edac``/``mcN/ce_count``), and the
stress-ng metrics (``stress_ng``/``vm/bogo_ops_per_s``).
"""

from __future__ import annotations

import anyio

from vetting_core.context import StageContext, StageFailed, StageSkipped
from vetting_core.model import Severity, ThresholdRule
from vetting_core.records import StageSpec

from ..cpu.runner import run_stress_ng
from ..cpu.sysfs import online_cpus
from .sizing import GIB, SizingError, plan_vm, read_edac, read_meminfo, read_oom_kills


class _MemoryLow(Exception):
    pass


async def run(ctx: StageContext) -> None:
    p = ctx.params
    workers = int(p.get("workers", 0)) or online_cpus()
    try:
        plan = plan_vm(
            read_meminfo(),
            workers=workers,
            reserve_min_bytes=int(p.get("reserve_min_bytes", GIB)),
            reserve_pct=float(p.get("reserve_pct", 10.0)),
            fraction=float(p.get("fraction", 1.0)),
            max_bytes=p.get("max_bytes"),
        )
    except SizingError as exc:
        raise StageSkipped(f"not enough free memory to stress safely: {exc}") from None
    ctx.log(f"memory stress plan: {plan.describe()}")
    ctx.summary["plan"] = {
        "total_bytes": plan.total_bytes,
        "per_worker_bytes": plan.per_worker_bytes,
        "workers": plan.workers,
        "reserve_bytes": plan.reserve_bytes,
        "available_bytes": plan.available_bytes,
    }
    oom_before = read_oom_kills()
    if oom_before is not None:
        ctx.measure("memory", "oom_kill", oom_before, "events")
    edac_before = read_edac()
    for k, v in edac_before.items():
        ctx.measure("edac", k, v, "errors")
    if not edac_before:
        ctx.log("no EDAC memory controllers in sysfs; ECC counters not checked")

    floor = plan.reserve_bytes * float(p.get("watchdog_floor_pct", 50.0)) / 100.0
    interval = float(p.get("watchdog_interval_s", 1.0))
    duration = float(p.get("duration_s", 60))
    options = [str(o) for o in p.get("options", ["--vm-keep", "--vm-method", "all"])]
    low_reason: list[str] = []
    verdict = None

    async def watchdog(scope: anyio.CancelScope) -> None:
        low = 0
        while True:
            await anyio.sleep(interval)
            avail = read_meminfo().get("MemAvailable", 0)
            ctx.measure("memory", "mem_available_bytes", avail, "B")
            low = low + 1 if avail < floor else 0
            if low >= 2:
                low_reason.append(
                    f"MemAvailable fell to {avail / 2**20:.0f} MiB, below the "
                    f"{floor / 2**20:.0f} MiB floor; stress stopped before the OOM killer"
                )
                scope.cancel()
                return

    async with anyio.create_task_group() as tg:
        tg.start_soon(watchdog, tg.cancel_scope)
        verdict = await run_stress_ng(
            ctx,
            {"vm": plan.workers},
            duration_s=duration,
            options=["--vm-bytes", f"{plan.per_worker_bytes}", *options],
            tag="memory",
        )
        tg.cancel_scope.cancel()

    oom_after = read_oom_kills()
    if oom_after is not None:
        ctx.measure("memory", "oom_kill", oom_after, "events")
    edac_after = read_edac()
    grew = {}
    for k, v in edac_after.items():
        ctx.measure("edac", k, v, "errors")
        if v > edac_before.get(k, v):
            grew[k] = v - edac_before[k]
    if low_reason:
        raise StageFailed(low_reason[0])
    if oom_before is not None and oom_after is not None and oom_after > oom_before:
        raise StageFailed(f"the OOM killer ran {oom_after - oom_before} time(s) during the memory stress")
    if any(k.endswith("ue_count") for k in grew):
        raise StageFailed(f"uncorrectable memory errors during the stress: {grew}")
    if grew:
        ctx.summary["edac_corrected"] = grew
    assert verdict is not None
    if verdict.verdict == "failed":
        raise StageFailed(verdict.reason)
    if verdict.verdict == "skipped":
        raise StageSkipped(verdict.reason)
    if grew and p.get("fail_on_corrected", True):
        raise StageFailed(f"corrected memory errors during the stress: {grew}")


STAGE = StageSpec(
    name="Memory",
    run=run,
    order=450,
    description="stress-ng --vm --verify over free memory minus a reserve; OOM and EDAC deltas.",
    params={
        "*": {"workers": 0, "reserve_min_bytes": GIB, "reserve_pct": 10.0, "fail_on_corrected": True},
        "quick": {"duration_s": 60, "fraction": 0.5},
        "deep": {"duration_s": 1200, "fraction": 1.0},
        "soak": {"duration_s": 3600, "fraction": 1.0},
    },
    thresholds=(
        ThresholdRule(kind="memory", key="oom_kill", op="delta_lte", threshold=0, unit="events"),
        ThresholdRule(kind="edac", key="*/ue_count", op="delta_lte", threshold=0, unit="errors"),
        ThresholdRule(kind="edac", key="*/ce_count", op="delta_lte", threshold=0, unit="errors",
                      severity=Severity.warning),
    ),
    timeout_s=3 * 3600.0,
)
