"""GPU: NVML inventory and counters, a burn from the backend chain, judged per GPU.

Backend chain (``params.backend = "auto"``): ``dcgmi diag -r LEVEL -j`` when dcgmi
is installed, else ``gpu_burn`` when installed, else the built-in bf16 GEMM burner
(:mod:`vetting_stages.gpu.burner`) when torch or cupy is importable. While the burn
runs, every GPU is sampled (temperature, power, SM clock, utilisation, throttle
reasons, PCIe link) and each sample recorded.

Per GPU (one sub-step each) the stage fails on: ECC disabled (``require_ecc``),
PCIe link narrower than the board's maximum, or a generation below maximum while
under load; any growth of uncorrectable ECC, retired pages, remapped-row failures,
PCIe replays (``max_pcie_replay_delta``) or a new Xid; a burn failure reported by
the backend; sustained TFLOP/s below ``min_ratio`` of the nominal (params
``nominal_tflops`` or the SKU table in :mod:`.nominal`); a temperature above
``max_temp_c`` (else the SKU's); hardware/thermal clock slowdown in more than
``max_bad_throttle_samples`` samples.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

import anyio

from vetting_core.context import StageCannotRun, StageContext, StageFailed
from vetting_core.model import Severity, ThresholdRule
from vetting_core.records import StageSpec
from vetting_core.tools import ToolNotFound, which

from . import dcgmi, gpu_burn, xid
from .burner import backend as burner_backend
from .burner import parse_output as parse_burner
from .detect import applies, pci_gpus
from .nominal import lookup
from .nvml import BAD_THROTTLE
from .sources import open_source

# Counters whose growth fails the GPU outright (corrected ECC is judged by threshold only).
FATAL_COUNTERS = (
    "ecc_dbe_volatile", "ecc_dbe_aggregate", "retired_pages_dbe", "retired_pages_sbe",
    "remapped_rows_uncorrectable", "remap_failure",
)


async def _kernel_log(ctx: StageContext) -> str | None:
    try:
        res = await ctx.run_tool(["dmesg"], timeout=30)
    except ToolNotFound:
        return None
    return res.stdout if res.returncode == 0 else None


def backend_chain(preference: str) -> tuple[list[str], str]:
    """The usable burn backends in chain order (dcgmi, gpu_burn, builtin), filtered
    by ``preference``; ``why`` explains an empty list."""
    if preference not in ("auto", "dcgmi", "gpu_burn", "builtin"):
        return [], f"unknown GPU burn backend {preference!r}"
    have = []
    for tool in ("dcgmi", "gpu_burn"):
        try:
            which(tool)
            have.append(tool)
        except ToolNotFound:
            pass
    if burner_backend():
        have.append("builtin")
    chain = have if preference == "auto" else [b for b in have if b == preference]
    if chain:
        return chain, ""
    if preference == "auto":
        return [], "no burn backend: dcgmi, gpu_burn not installed; torch/cupy with CUDA not importable"
    if preference == "builtin":
        return [], "torch/cupy with CUDA not importable"
    return [], f"{preference} is not installed"


def choose_backend(preference: str) -> tuple[str | None, str]:
    """(first backend of the chain, why) — ``why`` explains a None."""
    chain, why = backend_chain(preference)
    return (chain[0] if chain else None), why


class _Sampler:
    """Samples every GPU while the burn runs and keeps what the judgement needs."""

    def __init__(self, ctx: StageContext, source: Any, count: int, interval: float) -> None:
        self.ctx, self.source, self.count, self.interval = ctx, source, count, interval
        self.temps: dict[int, list[float]] = {i: [] for i in range(count)}
        self.bad_throttle: dict[int, int] = {i: 0 for i in range(count)}
        self.reasons: dict[int, set[str]] = {i: set() for i in range(count)}
        self.pcie_gen_max_seen: dict[int, int] = {}
        self.power: dict[int, list[float]] = {i: [] for i in range(count)}

    async def run(self) -> None:
        while True:
            for i in range(self.count):
                try:
                    t = await self.source.telemetry(i)
                except Exception as exc:  # noqa: BLE001 - a GPU falling off the bus shows here
                    self.ctx.log(f"gpu{i}: telemetry failed: {exc}", level="warning")
                    continue
                self.record(i, t)
            await anyio.sleep(self.interval)

    def record(self, i: int, t: dict[str, Any]) -> None:
        m = self.ctx.measure
        if "temp_c" in t:
            m("gpu_temp", f"gpu{i}/temp_c", t["temp_c"], "°C")
            self.temps[i].append(t["temp_c"])
        if "mem_temp_c" in t:
            m("gpu_temp", f"gpu{i}/mem_temp_c", t["mem_temp_c"], "°C")
        if "power_w" in t:
            m("gpu_power", f"gpu{i}/power_w", t["power_w"], "W")
            self.power[i].append(t["power_w"])
        for k, unit in (("sm_clock_mhz", "MHz"), ("util_pct", "%")):
            if k in t:
                m("gpu", f"gpu{i}/{k}", t[k], unit)
        if "throttle" in t:
            reasons = set(t["throttle"])
            self.reasons[i] |= reasons
            bad = reasons & BAD_THROTTLE
            m("gpu_throttle", f"gpu{i}/bad_reasons", len(bad), "reasons", text=",".join(sorted(reasons)) or None)
            if bad:
                self.bad_throttle[i] += 1
        if "pcie_gen" in t:
            self.pcie_gen_max_seen[i] = max(self.pcie_gen_max_seen.get(i, 0), int(t["pcie_gen"]))


async def _burn(ctx: StageContext, which_backend: str, count: int, duration: float) -> dict[int, dict[str, Any]] | None:
    """Run the burn; return per-GPU ``{"failure": str|None, "tflops": float|None}``, or
    None when the backend could not run at all (the next one of the chain is tried)."""
    p = ctx.params
    out: dict[int, dict[str, Any]] = {i: {"failure": None, "tflops": None} for i in range(count)}
    if which_backend == "dcgmi":
        level = int(p.get("dcgmi_level", 2))
        res = await ctx.run_tool(dcgmi.build_argv(level), timeout=float(p.get("dcgmi_timeout_s", 3600)),
                                 artifact="dcgmi-diag", stream=True)
        if "{" not in res.stdout:  # e.g. nv-hostengine not running: dcgmi never started a test
            ctx.log(f"dcgmi diag did not run: {(res.stdout + res.stderr).strip()[:300]}", level="warning")
            return None
        try:
            report = dcgmi.parse(res.stdout)
        except dcgmi.DcgmParseError as exc:
            for i in out:
                out[i]["failure"] = f"dcgmi diag: {exc}"
            return out
        for i in out:
            fails = report.gpu_failures(i)
            if fails:
                out[i]["failure"] = "; ".join(
                    f"dcgmi {f.test}: {'; '.join(f.messages) or 'FAIL'}" for f in fails
                )
        ctx.summary["dcgmi"] = {"version": report.version, "tests": len(report.results),
                                "warnings": [w.test for w in report.warnings()]}
        return out
    if which_backend == "gpu_burn":
        binary = which("gpu_burn")
        argv = gpu_burn.build_argv(duration, tensor_cores=p.get("gpu_burn_tensor_cores", True), binary=binary)
        compare = Path(binary).with_name("compare.ptx")
        if compare.exists():
            argv[1:1] = ["-c", str(compare)]
        res = await ctx.run_tool(argv, timeout=duration + 120, artifact="gpu_burn", stream=True)
        report = gpu_burn.parse(res.stdout + "\n" + res.stderr)
        failures = report.failures()
        for i in out:
            g = report.gpus.get(i)
            if g is not None and g.sustained_gflops:
                out[i]["tflops"] = g.sustained_gflops / 1000.0
                ctx.measure("gpu_burn", f"gpu{i}/tflops", out[i]["tflops"], "TFLOP/s")
            out[i]["failure"] = failures.get(i)
            if g is not None and g.temps_c:
                ctx.measure("gpu_temp", f"gpu{i}/gpu_burn_max_temp_c", max(g.temps_c), "°C")
        if -1 in failures:
            for i in out:
                out[i]["failure"] = out[i]["failure"] or failures[-1]
        return out
    # built-in burner: one process per GPU, all at once
    size = int(p.get("matrix_size", 0))

    async def one(i: int) -> None:
        argv = [sys.executable, "-m", "vetting_stages.gpu.burner", "--device", str(i),
                "--seconds", str(duration), "--size", str(size)]
        res = await ctx.run_tool(argv, timeout=duration + 300, stream=True)
        ctx.save_text("gpu-burner", f"burner-gpu{i}.jsonl", res.stdout)
        intervals, final = parse_burner(res.stdout)
        for rec in intervals:
            ctx.measure("gpu_burn", f"gpu{i}/interval_tflops", rec.get("tflops"), "TFLOP/s")
        if final is None:
            out[i]["failure"] = f"burner printed no result (exit {res.returncode}; {res.stderr.strip()[-300:]})"
        elif final.get("error"):
            out[i]["failure"] = f"burner error: {final['error']}"
        else:
            out[i]["tflops"] = float(final.get("tflops_sustained", 0.0))
            ctx.measure("gpu_burn", f"gpu{i}/tflops", out[i]["tflops"], "TFLOP/s")
            ctx.measure("gpu_burn", f"gpu{i}/errors", final.get("errors", 0), "elements")
            if final.get("errors"):
                out[i]["failure"] = f"{final['errors']} mismatching result elements (computation errors)"
            elif not final.get("iterations"):
                out[i]["failure"] = "burner did no work"

    async with anyio.create_task_group() as tg:
        for i in range(count):
            tg.start_soon(one, i)
    return out


async def run(ctx: StageContext) -> None:
    source, why = await open_source()
    if source is None:
        raise StageFailed(f"NVIDIA GPU present ({', '.join(pci_gpus()) or 'per inventory'}) but unusable: {why}")
    try:
        await _run(ctx, source)
    finally:
        source.close()


async def _run(ctx: StageContext, source: Any) -> None:
    p = ctx.params
    count = await source.count()
    if count == 0:
        raise StageFailed("NVIDIA GPU present but the driver reports 0 devices")
    expected = p.get("expected_count") or len((ctx.inventory or {}).get("gpus", []) or []) or None
    ctx.summary["source"] = source.kind
    statics: dict[int, dict[str, Any]] = {}
    before: dict[int, dict[str, float]] = {}
    for i in range(count):
        statics[i] = await source.static(i)
        before[i] = await source.counters(i)
        for k, v in before[i].items():
            ctx.measure("gpu_counter", f"gpu{i}/{k}", v, "count")
        s = statics[i]
        if s.get("vbios"):
            ctx.firmware("gpu_vbios", s.get("serial") or s.get("uuid") or f"gpu{i}", s["vbios"], "NVIDIA",
                         name=s.get("name"), driver=s.get("driver"))
    ctx.summary["gpus"] = statics
    kernel_before = await _kernel_log(ctx)
    xid_before = xid.count_by_gpu(xid.parse(kernel_before)) if kernel_before is not None else None
    for i, s in statics.items():
        if xid_before is not None and s.get("pci_bus_id"):
            ctx.measure("gpu_counter", f"gpu{i}/xid_events", xid_before.get(xid.pci_key(s["pci_bus_id"]), 0), "events")

    chain, why = backend_chain(str(p.get("backend", "auto")))
    which_backend: str | None = None
    duration = float(p.get("duration_s", 120))
    sampler = _Sampler(ctx, source, count, float(p.get("sample_interval_s", 1.0)))
    burn: dict[int, dict[str, Any]] = {}
    if not chain:
        ctx.log(f"no GPU burn: {why}", level="warning")
    else:
        async with anyio.create_task_group() as tg:
            tg.start_soon(sampler.run)
            for candidate in chain:
                ctx.progress(0.0, f"GPU burn with {candidate} for {duration:.0f}s")
                got = await _burn(ctx, candidate, count, duration)
                if got is not None:
                    which_backend, burn = candidate, got
                    break
            if which_backend is None:
                why = f"every burn backend failed to start ({', '.join(chain)})"
            ctx.summary["backend"] = which_backend
            if which_backend == "dcgmi" and p.get("measure_tflops", True) and burner_backend():
                # dcgmi judges health but reports no GEMM rate: measure it with the built-in burner
                rate = await _burn(ctx, "builtin", count, min(duration, float(p.get("tflops_duration_s", 60)))) or {}
                for i, r in rate.items():
                    burn[i]["tflops"] = r["tflops"]
                    burn[i]["failure"] = burn[i]["failure"] or r["failure"]
            tg.cancel_scope.cancel()

    kernel_after = await _kernel_log(ctx)
    xid_after = xid.parse(kernel_after) if kernel_after is not None else None
    if xid_after is None:
        ctx.log("kernel log unreadable; Xid events not checked", level="warning")

    for i in range(count):
        s = statics[i]
        async with ctx.substep(f"gpu{i}") as step:
            problems: list[str] = []
            sku = lookup(s.get("name") or "")
            step.summary.update(name=s.get("name"), serial=s.get("serial"), sku=sku.name if sku else None)
            if p.get("require_ecc", True) and s.get("ecc_current") is False:
                problems.append("ECC is disabled")
            wmax, wcur = s.get("pcie_width_max"), s.get("pcie_width_current")
            if wmax and wcur and wcur < wmax:
                problems.append(f"PCIe link x{wcur}, board supports x{wmax}")
            gen_seen = sampler.pcie_gen_max_seen.get(i, s.get("pcie_gen_current"))
            gmax = s.get("pcie_gen_max")
            if which_backend and gmax and gen_seen and gen_seen < gmax and p.get("check_pcie_gen", True):
                problems.append(f"PCIe gen{gen_seen} under load, board supports gen{gmax}")
            if gen_seen:
                ctx.measure("gpu", f"gpu{i}/pcie_gen_under_load", gen_seen, "gen")
            if wcur:
                ctx.measure("gpu", f"gpu{i}/pcie_width", wcur, "lanes")
            after = await source.counters(i)
            grew = {}
            for k, v in after.items():
                ctx.measure("gpu_counter", f"gpu{i}/{k}", v, "count")
                if k in before[i] and v > before[i][k]:
                    grew[k] = v - before[i][k]
            if grew:
                step.summary["counter_deltas"] = grew
            fatal = {k: v for k, v in grew.items() if k in FATAL_COUNTERS}
            if fatal:
                problems.append(f"error counters grew: {fatal}")
            if grew.get("pcie_replay", 0) > float(p.get("max_pcie_replay_delta", 0)):
                problems.append(f"PCIe replay counter +{grew['pcie_replay']:.0f}")
            if after.get("remap_pending") or after.get("retired_pages_pending"):
                problems.append("memory repair pending (a GPU reset is needed)")
            if xid_after is not None and s.get("pci_bus_id"):
                key = xid.pci_key(s["pci_bus_id"])
                new = xid.count_by_gpu(xid_after)[key] - ((xid_before or {}).get(key, 0))
                events = [e.xid for e in xid_after if e.pci == key]
                ctx.measure("gpu_counter", f"gpu{i}/xid_events", len(events), "events")
                if new > 0:
                    problems.append(f"{new} new Xid event(s): {sorted(set(events[-new:]))}")
            b = burn.get(i) or {}
            if b.get("failure"):
                problems.append(b["failure"])
            tflops = b.get("tflops")
            if tflops is not None:
                nominal = p.get("nominal_tflops") or (sku.spec_bf16 * sku.achievable if sku else None)
                step.summary["tflops"] = round(tflops, 2)
                if nominal:
                    ratio = tflops / float(nominal)
                    ctx.measure("gpu_burn", f"gpu{i}/nominal_ratio", ratio, "ratio")
                    step.summary.update(nominal_tflops=round(float(nominal), 1), nominal_ratio=round(ratio, 3))
                    if ratio < float(p.get("min_ratio", 0.9)):
                        problems.append(
                            f"{tflops:.0f} TFLOP/s sustained is {ratio:.0%} of the nominal {float(nominal):.0f}"
                        )
            temps = sampler.temps.get(i) or []
            if temps:
                limit = float(p.get("max_temp_c") or (sku.max_temp_c if sku else 87.0))
                step.summary.update(max_temp_c=max(temps), mean_temp_c=round(statistics.fmean(temps), 1))
                if max(temps) > limit:
                    problems.append(f"temperature reached {max(temps):.0f} °C (limit {limit:.0f} °C)")
            if sampler.power.get(i):
                step.summary["max_power_w"] = round(max(sampler.power[i]), 1)
            if sampler.reasons.get(i):
                step.summary["throttle_reasons_seen"] = sorted(sampler.reasons[i])
            if sampler.bad_throttle.get(i, 0) > int(p.get("max_bad_throttle_samples", 3)):
                problems.append(
                    f"clock slowdown ({', '.join(sorted(sampler.reasons[i] & BAD_THROTTLE))}) "
                    f"in {sampler.bad_throttle[i]} samples"
                )
            if problems:
                step.fail("; ".join(problems))
    if expected and count < int(expected):
        raise StageFailed(f"{count} GPU(s) visible to the driver, {expected} expected")
    if which_backend is None and p.get("require_burn", True):
        raise StageCannotRun(f"GPU burn could not run: {why}", cause="tool_missing")


STAGE = StageSpec(
    name="GPU",
    run=run,
    order=700,
    applies=applies,
    description="NVML inventory, ECC/retired-page/row-remap/Xid/PCIe-replay deltas, burn via dcgmi/gpu_burn/bf16 GEMM.",
    params={
        "*": {
            "backend": "auto",
            "min_ratio": 0.9,
            "require_ecc": True,
            "sample_interval_s": 1.0,
            "max_pcie_replay_delta": 0,
            "max_bad_throttle_samples": 3,
            "matrix_size": 0,  # 0: the burner picks the fastest GEMM size
            "require_burn": True,
        },
        "quick": {"duration_s": 120, "dcgmi_level": 2},
        "deep": {"duration_s": 1800, "dcgmi_level": 3},
        "soak": {"duration_s": 3600, "dcgmi_level": 4},
    },
    thresholds=(
        ThresholdRule(kind="gpu_counter", key="*/ecc_dbe_*", op="delta_lte", threshold=0, unit="count"),
        ThresholdRule(kind="gpu_counter", key="*/ecc_sbe_volatile", op="delta_lte", threshold=0, unit="count",
                      severity=Severity.warning),
        ThresholdRule(kind="gpu_counter", key="*/retired_pages_*", op="delta_lte", threshold=0, unit="count"),
        ThresholdRule(kind="gpu_counter", key="*/remapped_rows_uncorrectable", op="delta_lte", threshold=0),
        ThresholdRule(kind="gpu_counter", key="*/remap_failure", op="lte", threshold=0),
        ThresholdRule(kind="gpu_counter", key="*/pcie_replay", op="delta_lte", threshold=0, unit="count"),
        ThresholdRule(kind="gpu_counter", key="*/xid_events", op="delta_lte", threshold=0, unit="events"),
        ThresholdRule(kind="gpu_burn", key="*/nominal_ratio", op="gte", threshold=0.9, unit="ratio"),
        ThresholdRule(kind="gpu_temp", key="*/temp_c", op="lte", threshold=87.0, unit="°C", severity=Severity.warning),
        ThresholdRule(kind="gpu_temp", key="*/mem_temp_c", op="lte", threshold=95.0, unit="°C", severity=Severity.warning),
    ),
    timeout_s=3 * 3600.0,
)
