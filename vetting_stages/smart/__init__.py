"""SMART stage (entry point ``smart``, order 300): ``smartctl --json -x`` per disk.

One sub-step per disk. The verdict comes from the parsed JSON and the exit-status
bits (table in :mod:`.parser`). Counters (reallocated, pending, offline-uncorrectable,
UDMA CRC, NVMe media errors...) are recorded as ``smart_attr`` measurements keyed
``<disk>/<counter>`` so the threshold engine judges their *delta* (``delta_lte``)
between the first and the last sample of the stage: once before and once after the
optional self-test. The Storage stage records the same kind before and after its disk
work, so a destructive run is judged across the writes too.

A disk without SMART (virtio, USB bridge without SAT) is skipped with smartctl's
reason, never failed.
"""

from __future__ import annotations

import json
from typing import Any

import anyio

from vetting_core import hookimpl
from vetting_core.context import StageContext, StageSkipped
from vetting_core.model import Severity, ThresholdRule
from vetting_core.records import StageSpec
from vetting_core.tools import ToolNotFound, which

from .._common import safe_name
from .parser import parse_smart, self_test_state

__all__ = ["SMART_STAGE", "parse_smart", "record_counters", "smart_disks", "smart_thresholds"]


def smart_thresholds(stage: str) -> tuple[ThresholdRule, ...]:
    """Default SMART judgements for ``stage`` (SMART itself, and Storage around its
    disk work)."""
    delta = ("Reallocated_Sector_Ct", "Current_Pending_Sector", "Offline_Uncorrectable", "UDMA_CRC_Error_Count",
             "Reported_Uncorrect", "media_errors", "scsi_grown_defect_list", "scsi_uncorrected_read", "scsi_uncorrected_write")
    rules = [ThresholdRule(stage=stage, kind="smart_attr", key=f"*/{name}", op="delta_lte", threshold=0, source="stage_default") for name in delta]
    rules.append(ThresholdRule(stage=stage, kind="smart_attr", key="*/critical_warning", op="eq", threshold=0, source="stage_default"))
    rules.append(ThresholdRule(stage=stage, kind="smart_attr", key="*/percentage_used", op="lte", threshold=100, severity=Severity.warning, source="stage_default"))
    return tuple(rules)


def smart_disks(inventory: dict[str, Any]) -> list[dict[str, Any]]:
    """Disks worth asking: whole disks from the inventory, not loop/zram/ram."""
    out = []
    for d in inventory.get("disks") or []:
        name = d.get("name", "")
        if name.startswith(("loop", "zram", "ram", "sr", "dm-", "md")):
            continue
        out.append(d)
    return out


async def read_smart(ctx: StageContext, path: str, artifact: str | None = None) -> tuple[dict[str, Any], str]:
    """Run ``smartctl --json -x`` and parse it; the raw JSON is kept as an artifact."""
    res = await ctx.run_tool(["smartctl", "--json", "-x", path], timeout=120)
    if artifact:
        ctx.save_text("smartctl", f"{artifact}.json", res.stdout)
    if res.timed_out:
        return {"verdict": "failed", "reasons": ["smartctl timed out"], "counters": {}, "warnings": []}, res.stdout
    try:
        return parse_smart(res.stdout), res.stdout
    except ValueError as exc:
        return {"verdict": "failed", "reasons": [str(exc)], "counters": {}, "warnings": []}, res.stdout


def record_counters(ctx: StageContext, disk: str, report: dict[str, Any]) -> None:
    for name, value in report.get("counters", {}).items():
        ctx.measure("smart_attr", f"{disk}/{name}", value)
    if report.get("temperature_c") is not None:
        ctx.measure("smart_temp", disk, report["temperature_c"], "C")


async def _self_test(
    ctx: StageContext, path: str, kind: str, poll_s: float, timeout_s: float, before: dict[str, Any]
) -> dict[str, Any]:
    """Start a self-test and poll until it finishes (or the timeout aborts it).

    ``before`` is the self-test state read before the start. The verdict is the newest
    log entry only when the test really ran: a start smartctl reports as failed (exit
    bits 0-2: command line, open, or the SMART command itself) or a log whose newest
    entry is still the one from before gives ``error``, never an old entry's result.
    """
    start = await ctx.run_tool(["smartctl", "--json", "-t", kind, path], timeout=60)
    ctx.log(f"{path}: {kind} self-test requested (smartctl exit {start.returncode})")
    if start.returncode & 0b111:
        try:
            messages = [m.get("string", "") for m in json.loads(start.stdout)["smartctl"].get("messages", [])]
        except (ValueError, KeyError, TypeError, AttributeError):
            messages = [start.stderr.strip()[:200]]
        return {"running": False, "error": f"smartctl could not start the {kind} self-test (exit {start.returncode}): "
                + ("; ".join(m for m in messages if m) or "no message")}
    state = await _poll_self_test(ctx, path, poll_s, timeout_s)
    if "error" not in state and state.get("last_passed") is not False and state.get("newest") == before.get("newest"):
        state["error"] = f"the {kind} self-test left no new entry in the self-test log: it did not run"
    return state


async def _poll_self_test(ctx: StageContext, path: str, poll_s: float, timeout_s: float) -> dict[str, Any]:
    with anyio.move_on_after(timeout_s) as scope:
        await anyio.sleep(min(poll_s, 5))
        while True:
            res = await ctx.run_tool(["smartctl", "--json", "-c", "-l", "selftest", path], timeout=60)
            try:
                state = self_test_state(json.loads(res.stdout))
            except ValueError:
                state = {"running": False, "last_status": "unparseable smartctl output"}
            if not state.get("running"):
                return state
            ctx.progress(None, f"{path}: self-test {100 - state.get('remaining_percent', 100)}% done")
            await anyio.sleep(poll_s)
    if scope.cancelled_caught:
        await ctx.run_tool(["smartctl", "-X", path], timeout=60)
        return {"running": False, "last_passed": False, "last_status": f"self-test did not finish within {timeout_s:.0f}s (aborted)"}
    return {"running": False, "error": "polling the self-test ended without a state"}


def _self_test_kind(wanted: str, before: dict[str, Any], budget_s: float | None, ctx: StageContext, path: str) -> str:
    """``long`` unless the drive says its extended test would not fit in the budget."""
    minutes = (before.get("polling_minutes") or {}).get("extended")
    if wanted == "long" and budget_s and minutes and minutes * 60 > budget_s:
        ctx.log(f"{path}: the drive's extended self-test takes {minutes} min, over this profile's "
                f"{budget_s / 60:.0f} min budget: running the short one", level="warning")
        return "short"
    return wanted


async def run(ctx: StageContext) -> None:
    """Every disk at once: smartctl reads are independent, and a drive runs its
    self-test on its own, so ten disks take as long as the slowest one."""
    disks = smart_disks(ctx.inventory)
    if not disks:
        raise StageSkipped("no disks in the inventory")
    which("smartctl")  # missing: ToolNotFound ends the stage cannot_run, not failed
    self_test = ctx.params.get("self_test")  # None, "short" or "long"
    budget = ctx.params.get("self_test_budget_s")
    summary: dict[str, Any] = {}
    ctx.summary["disks"] = summary
    skipped: list[str] = []
    done = 0

    async def one(disk: dict[str, Any]) -> None:
        nonlocal done
        name, path = disk.get("name") or safe_name(disk["path"]), disk["path"]
        async with ctx.substep(name) as step:
            report, raw = await read_smart(ctx, path, artifact=f"smartctl-{safe_name(name)}")
            step.summary.update({k: report.get(k) for k in ("model", "serial", "firmware", "protocol", "passed", "exit_status", "counters", "warnings", "reasons")})
            summary[name] = report.get("verdict")
            if report["verdict"] == "skipped":
                skipped.append(name)
                step.skip("; ".join(report["reasons"]))
                return
            record_counters(ctx, name, report)
            for w in report.get("warnings", []):
                ctx.log(f"{path}: {w}", level="warning")
            if report["verdict"] != "passed":
                step.fail("; ".join(report["reasons"]))
                return
            if self_test in ("short", "long"):
                before = self_test_state(json.loads(raw))
                kind = _self_test_kind(self_test, before, budget, ctx, path)
                timeout = float(ctx.params.get("self_test_timeout_s", 600 if kind == "short" else budget or 6 * 3600))
                state = await _self_test(ctx, path, kind, float(ctx.params.get("poll_s", 10)), timeout, before=before)
                step.summary["self_test"] = {"kind": kind, **state}
                after, _ = await read_smart(ctx, path, artifact=f"smartctl-{safe_name(name)}-after")
                record_counters(ctx, name, after)
                if state.get("last_passed") is False:
                    step.fail(f"{kind} self-test: {state.get('last_status')}")
                elif state.get("error"):
                    step.fail(state["error"])
                elif after.get("verdict") == "failed":
                    step.fail("; ".join(after["reasons"]))
        done += 1
        ctx.progress(done / len(disks), f"SMART: {done} of {len(disks)} disks done")

    async with anyio.create_task_group() as tg:
        for disk in disks:
            tg.start_soon(one, disk)
    if len(skipped) == len(disks):
        raise StageSkipped(f"no disk answered SMART ({len(skipped)} skipped)")


SMART_STAGE = StageSpec(
    name="SMART",
    run=run,
    order=300,
    description="smartctl health, counters (judged as deltas) and optional self-test per disk.",
    params={
        "quick": {"self_test": "short", "poll_s": 10},
        # the long test only where the drive says it takes ≤ 20 min (NVMe, SSDs), else the short one
        "deep": {"self_test": "long", "poll_s": 30, "self_test_budget_s": 1200},
        "soak": {"self_test": None},
    },
    thresholds=smart_thresholds("SMART"),
    timeout_s=8 * 3600,
)


@hookimpl
def vetting_stages():
    return [SMART_STAGE]
