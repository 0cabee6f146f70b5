"""SMART stage (entry point ``smart``, order 300): ``smartctl --json -x`` per disk.

Which disks: every device ``smartctl --scan-open`` reports, with the ``-d`` type it
reports (``sat``, ``nvme``, ``scsi``, ``megaraid,N``, ``sat+megaraid,N``, ``cciss,N``,
``aacraid,H,L,ID``...), so the physical disks behind a RAID controller are read too;
and every whole disk of the inventory. An inventory disk SMART cannot reach through
any device type (a RAID logical drive whose physical disks the scan did not list) is a
sub-step skipped with a *warning* that names the controller, never a silent skip.

One sub-step per disk: its health. The counters (:mod:`.parser`) are recorded as
``smart_attr`` measurements ``<disk>/<counter>`` once when the stage starts, and the
rules of the run (stage defaults in :mod:`.health`, overridden by the profile and the
host's expected spec) judge them there and then: a drive that *arrives* with pending
sectors or a grown defect list fails its sub-step with the counter named; warnings
(a few reallocated sectors) are kept in the sub-step's summary. The orchestrator
judges the same samples with the same rules, and the change of each counter during
the stage (``delta_lte``) once the self-test has run.

With ``self_test`` set (``short``/``long``), a second sub-step per disk,
``<disk>:self-test``, runs the drive's own test (ATA, NVMe or SCSI/SAS log): "not
supported" skips it with smartctl's reason, a test aborted or interrupted by the host
is run once more, and only a real failure in the log fails it.

A disk without SMART (virtio, USB bridge without SAT) is skipped with smartctl's
reason, never failed.
"""

from __future__ import annotations

import json
import re
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import anyio

from vetting_core import hookimpl
from vetting_core.context import StageContext, StageSkipped, SubStepHandle
from vetting_core.model import Measurement, Severity, ThresholdRule
from vetting_core.records import StageSpec
from vetting_core.thresholds import BUILTIN_OPERATORS, ThresholdEngine
from vetting_core.tools import which

from .._common import read_sysfs, safe_name
from .health import delta_rules, describe, health_rules, smart_thresholds
from .parser import parse_scan, parse_smart, self_test_state

__all__ = ["SMART_STAGE", "delta_rules", "parse_smart", "read_smart", "record_counters", "smart_disks", "smart_thresholds"]

_OPERATORS = {o.name: o for o in BUILTIN_OPERATORS}
_UNSUPPORTED = re.compile(r"not supported|does not support|unsupported", re.I)


def smart_disks(inventory: dict[str, Any]) -> list[dict[str, Any]]:
    """Disks worth asking: whole disks from the inventory, not loop/zram/ram."""
    out = []
    for d in inventory.get("disks") or []:
        name = d.get("name", "")
        if name.startswith(("loop", "zram", "ram", "sr", "dm-", "md")):
            continue
        out.append(d)
    return out


def _dargs(dtype: str | None) -> list[str]:
    return ["-d", dtype] if dtype and dtype != "auto" else []


async def read_smart(
    ctx: StageContext, path: str, artifact: str | None = None, dtype: str | None = None
) -> tuple[dict[str, Any], str]:
    """Run ``smartctl --json -x [-d TYPE] PATH`` and parse it; the raw JSON is kept as an artifact."""
    res = await ctx.run_tool(["smartctl", "--json", "-x", *_dargs(dtype), path], timeout=120)
    if artifact:
        ctx.save_text("smartctl", f"{artifact}.json", res.stdout)
    if res.timed_out:
        return {"verdict": "failed", "reasons": ["smartctl timed out"], "counters": {}, "warnings": []}, res.stdout
    try:
        return parse_smart(res.stdout), res.stdout
    except ValueError as exc:
        return {"verdict": "failed", "reasons": [str(exc)], "counters": {}, "warnings": []}, res.stdout


def record_counters(ctx: StageContext, disk: str, report: dict[str, Any]) -> list[Measurement]:
    samples = [ctx.measure("smart_attr", f"{disk}/{name}", value) for name, value in report.get("counters", {}).items()]
    if report.get("temperature_c") is not None:
        ctx.measure("smart_temp", disk, report["temperature_c"], "C")
    return samples


# -- targets: the scan and the inventory ------------------------------------------------

async def scan(ctx: StageContext) -> list[dict[str, str]]:
    """``smartctl --scan-open --json``; [] (with a warning) when it cannot be read."""
    res = await ctx.run_tool(["smartctl", "--scan-open", "--json"], timeout=120)
    ctx.save_text("smartctl", "smartctl-scan-open.json", res.stdout)
    try:
        return parse_scan(res.stdout)
    except ValueError as exc:
        ctx.log(f"smartctl --scan-open: {exc}; reading the inventory's disks with automatic device types",
                level="warning")
        return []


def _covers(scan_name: str, disk_path: str) -> bool:
    """A scan entry reaches an inventory disk: same node, or the NVMe controller of a namespace."""
    return disk_path == scan_name or re.fullmatch(re.escape(scan_name) + r"n\d+", disk_path) is not None


def targets(inventory_disks: list[dict[str, Any]], scanned: list[dict[str, str]]) -> list[dict[str, Any]]:
    """What to read, in order: each inventory disk (with the scan's ``-d`` type for its
    node, if any), then each disk behind a RAID controller the scan reported."""
    out: list[dict[str, Any]] = []
    for disk in inventory_disks:
        hit = next((s for s in scanned if not s["controller"] and _covers(s["name"], disk["path"])), None)
        out.append({"name": disk.get("name") or safe_name(disk["path"]), "path": disk["path"],
                    "dtype": hit["type"] if hit else None, "disk": disk})
    for s in scanned:
        if s["controller"]:
            out.append({"name": f"{safe_name(s['name'])}[{s['type']}]", "path": s["name"], "dtype": s["type"],
                        "controller": s["controller"], "info_name": s["info_name"]})
    return out


# SCSI host drivers of RAID controllers that hide their disks behind logical drives
RAID_DRIVERS = ("megaraid_sas", "hpsa", "cciss", "aacraid", "smartpqi", "arcmsr", "3w-9xxx", "3w-sas", "3w-xxxx",
                "hptiop", "sssraid", "mpt3sas_raid")
RAID_MODELS = re.compile(r"PERC|MegaRAID|LOGICAL VOLUME|MR\d{4}|RAID|Smart Array|ServeRAID", re.I)


def controller_of(disk: dict[str, Any], report: dict[str, Any], sys_block: str = "/sys/block") -> tuple[bool, str]:
    """Is an inventory disk a RAID controller's logical drive, and words naming the
    controller: the SCSI host's driver (``megaraid_sas``, ``hpsa``, ``aacraid``,
    ``smartpqi``...), the model the logical drive reports, the ``-d`` type smartctl
    suggests in its message."""
    parts, raid = [], False
    name = disk.get("name") or Path(disk.get("path", "")).name
    host = Path(sys_block, name, "device").resolve().parent.parent
    driver = read_sysfs(Path(host, "scsi_host", host.name, "proc_name"))
    if driver:
        parts.append(f"driver {driver}")
        raid |= driver in RAID_DRIVERS
    model = " ".join(x for x in (disk.get("vendor"), disk.get("model")) if x)
    if model:
        parts.append(f"logical drive {model!r}")
        raid |= RAID_MODELS.search(model) is not None
    hint = re.search(r"-d ([a-z0-9+]+),N", " ".join(report.get("messages", [])))
    if hint:
        parts.append(f"smartctl suggests -d {hint.group(1)},N")
        raid = True
    return raid, ", ".join(parts)


# -- judging the start ------------------------------------------------------------------

def start_rules(ctx: StageContext) -> list[ThresholdRule]:
    """The run's absolute SMART rules for this stage (stage defaults ← profile ← host);
    the defaults when the context carries none. Deltas are left to the orchestrator."""
    rules = [
        r for r in ctx.thresholds
        if r.kind == "smart_attr" and fnmatchcase(ctx.stage, r.stage) and r.op in _OPERATORS
        and not _OPERATORS[r.op].baseline
    ]
    return rules or list(health_rules(ctx.stage))


def judge_start(engine: ThresholdEngine, samples: list[Measurement], step: SubStepHandle, ctx: StageContext) -> None:
    """Absolute health at the start: critical breaches fail the disk's sub-step,
    warnings go to its summary and the log."""
    critical, warnings = [], []
    for b in engine.evaluate(samples, per_sample=False).breaches:
        rule = engine.rules[b.rule]
        text = describe(rule, b.observed)
        (critical if rule.severity is Severity.critical else warnings).append(text)
    if warnings:
        step.summary.setdefault("warnings", []).extend(warnings)
        for w in warnings:
            ctx.log(f"{step.step.name}: {w}", level="warning")
    if critical:
        step.fail("; ".join(critical))


# -- self-tests -------------------------------------------------------------------------

async def _start_self_test(ctx: StageContext, t: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """Ask for the test. None when it started; else ``{"unsupported": why}`` or ``{"error": why}``."""
    start = await ctx.run_tool(["smartctl", "--json", "-t", kind, *_dargs(t["dtype"]), t["path"]], timeout=60)
    ctx.log(f"{t['name']}: {kind} self-test requested (smartctl exit {start.returncode})")
    try:
        messages = [m.get("string", "") for m in json.loads(start.stdout)["smartctl"].get("messages", [])]
    except (ValueError, KeyError, TypeError, AttributeError):
        messages = [start.stderr.strip()[:200]]
    said = "; ".join(m for m in messages if m) or "no message"
    if any(_UNSUPPORTED.search(m) for m in messages):
        return {"unsupported": f"the drive does not support the {kind} self-test: {said}"}
    if start.returncode & 0b111:
        return {"error": f"smartctl could not start the {kind} self-test (exit {start.returncode}): {said}"}
    return None


async def _poll_self_test(ctx: StageContext, t: dict[str, Any], scsi: bool, poll_s: float, timeout_s: float) -> dict[str, Any]:
    argv = ["smartctl", "--json", *([] if scsi else ["-c"]), "-l", "selftest", *_dargs(t["dtype"]), t["path"]]
    with anyio.move_on_after(timeout_s) as scope:
        await anyio.sleep(min(poll_s, 5))
        while True:
            res = await ctx.run_tool(argv, timeout=60)
            try:
                state = self_test_state(json.loads(res.stdout))
            except ValueError:
                state = {"running": False, "last_status": "unparseable smartctl output"}
            if not state.get("running"):
                return state
            ctx.progress(None, f"{t['name']}: self-test {100 - state.get('remaining_percent', 100)}% done")
            await anyio.sleep(poll_s)
    if scope.cancelled_caught:
        await ctx.run_tool(["smartctl", "-X", *_dargs(t["dtype"]), t["path"]], timeout=60)
        return {"running": False, "outcome": "failed", "last_passed": False,
                "last_status": f"self-test did not finish within {timeout_s:.0f}s (aborted)"}
    return {"running": False, "error": "polling the self-test ended without a state"}


async def _one_self_test(ctx: StageContext, t: dict[str, Any], kind: str, scsi: bool, before: dict[str, Any],
                         timeout: float) -> dict[str, Any]:
    """Start, poll, and tell what happened. A start smartctl reports as failed, or a log
    whose newest entry is still the one from before, is an ``error``: an old entry's
    result is never taken for this run's."""
    refused = await _start_self_test(ctx, t, kind)
    if refused:
        return refused
    state = await _poll_self_test(ctx, t, scsi, float(ctx.params.get("poll_s", 10)), timeout)
    if "error" not in state and state.get("outcome") != "failed" and state.get("newest") == before.get("newest"):
        state["error"] = f"the {kind} self-test left no new entry in the self-test log: it did not run"
    return state


def _self_test_kind(wanted: str, before: dict[str, Any], budget_s: float | None, ctx: StageContext, name: str) -> str:
    """``long`` unless the drive says its extended test would not fit in the budget."""
    minutes = (before.get("polling_minutes") or {}).get("extended")
    if wanted == "long" and budget_s and minutes and minutes * 60 > budget_s:
        ctx.log(f"{name}: the drive's extended self-test takes {minutes} min, over this profile's "
                f"{budget_s / 60:.0f} min budget: running the short one", level="warning")
        return "short"
    return wanted


async def self_test_step(ctx: StageContext, t: dict[str, Any], report: dict[str, Any], wanted: str) -> None:
    """The ``<disk>:self-test`` sub-step, then the counters read again (for deltas)."""
    before = report["self_test"]
    scsi = report.get("protocol") == "SCSI"
    async with ctx.substep(f"{t['name']}:self-test") as step:
        if before.get("supported") is False:
            step.skip("the drive does not support SMART self-tests (its capabilities say so)")
            return
        kind = _self_test_kind(wanted, before, ctx.params.get("self_test_budget_s"), ctx, t["name"])
        timeout = float(ctx.params.get("self_test_timeout_s", 600 if kind == "short" else
                                       ctx.params.get("self_test_budget_s") or 6 * 3600))
        state = await _one_self_test(ctx, t, kind, scsi, before, timeout)
        if state.get("outcome") == "aborted":
            ctx.log(f"{t['name']}: the {kind} self-test was aborted ({state.get('last_status')}); running it once more",
                    level="warning")
            state = await _one_self_test(ctx, t, kind, scsi, state, timeout)
        step.summary["self_test"] = {"kind": kind, **state}
        if state.get("unsupported"):
            step.skip(state["unsupported"])
        elif state.get("error"):
            step.fail(state["error"])
        elif state.get("outcome") == "aborted":
            step.skip(f"the {kind} self-test was aborted twice ({state.get('last_status')}): no verdict on the drive")
        elif state.get("outcome") == "failed":
            step.fail(f"{kind} self-test: {state.get('last_status')}")
        after, _ = await read_smart(ctx, t["path"], artifact=f"smartctl-{safe_name(t['name'])}-after", dtype=t["dtype"])
        record_counters(ctx, t["name"], after)
        if after.get("verdict") == "failed" and step.step.state.value == "running":
            step.fail("; ".join(after["reasons"]))


# -- the stage --------------------------------------------------------------------------

async def run(ctx: StageContext) -> None:
    """Every disk at once: smartctl reads are independent, and a drive runs its
    self-test on its own, so ten disks take as long as the slowest one."""
    which("smartctl")  # missing: ToolNotFound ends the stage cannot_run, not failed
    scanned = await scan(ctx)
    todo = targets(smart_disks(ctx.inventory), scanned)
    if not todo:
        raise StageSkipped("no disks in the inventory and none behind a controller")
    self_test = ctx.params.get("self_test")  # None, "short" or "long"
    engine = ThresholdEngine(start_rules(ctx), _OPERATORS)
    summary: dict[str, Any] = {}
    ctx.summary["disks"] = summary
    behind = sorted({t["controller"] for t in todo if t.get("controller")})
    if behind:
        ctx.summary["controllers"] = behind
    done = 0

    async def health(t: dict[str, Any]) -> dict[str, Any] | None:
        """The disk's health sub-step; its report when the drive is healthy enough to self-test."""
        async with ctx.substep(t["name"]) as step:
            report, _ = await read_smart(ctx, t["path"], artifact=f"smartctl-{safe_name(t['name'])}", dtype=t["dtype"])
            step.summary.update({k: report.get(k) for k in ("model", "serial", "firmware", "protocol", "device_type",
                                                            "passed", "exit_status", "counters", "raw", "warnings",
                                                            "notes", "reasons")})
            summary[t["name"]] = report.get("verdict")
            if report["verdict"] == "skipped":
                reason = "; ".join(report["reasons"])
                step.skip(_unreachable(ctx, t, report, reason, behind) if t.get("disk") is not None else reason)
                return None
            samples = record_counters(ctx, t["name"], report)
            for w in report.get("warnings", []):
                ctx.log(f"{t['name']}: {w}", level="warning")
            if report["verdict"] != "passed":
                step.fail("; ".join(report["reasons"]))
                return None
            judge_start(engine, samples, step, ctx)
            return report if step.step.state.value == "running" else None

    async def one(t: dict[str, Any]) -> None:
        nonlocal done
        try:
            report = await health(t)
            if report is not None and self_test in ("short", "long"):
                await self_test_step(ctx, t, report, self_test)
        finally:
            done += 1
            ctx.progress(done / len(todo), f"SMART: {done} of {len(todo)} disks done")

    async with anyio.create_task_group() as tg:
        for t in todo:
            tg.start_soon(one, t)
    if all(s.state.value == "skipped" for s in ctx.substeps):
        raise StageSkipped(f"no disk answered SMART ({len(ctx.substeps)} skipped)")


def _unreachable(ctx: StageContext, t: dict[str, Any], report: dict[str, Any], reason: str, behind: list[str]) -> str:
    """An inventory disk smartctl could not open. A plain disk without SMART (virtio, a
    USB bridge) keeps smartctl's reason. A RAID logical drive whose physical disks the
    scan listed is expected (they are read through the controller); one whose disks
    SMART cannot reach through any device type is a warning naming the controller."""
    raid, controller = controller_of(t["disk"], report)
    if not raid:
        return reason
    if behind:
        return f"{reason} — a RAID logical drive ({controller}); its physical disks are read through the controller"
    warning = (f"SMART cannot reach {t['path']} through any device type: it is a RAID logical drive ({controller}) "
               "and smartctl --scan-open lists no physical disk behind the controller")
    ctx.summary.setdefault("warnings", []).append(warning)
    ctx.log(warning, level="warning")
    return f"warning: {warning} (smartctl: {reason})"


SMART_STAGE = StageSpec(
    name="SMART",
    run=run,
    order=300,
    description="smartctl health (absolute at the start, and deltas), RAID-attached disks, optional self-test per disk.",
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
