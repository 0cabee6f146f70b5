"""Burn: CPU, memory, storage (read-only unless the gates allow more) and GPU stress
all at once for the profile's duration, judged continuously.

Every ``sample_interval_s`` the stage samples CPU thermal zones and hwmon
temperatures, MemAvailable, the kernel OOM counter and, when GPUs are present,
their telemetry; each sample is recorded *and* fed to a
:class:`~vetting_stages.burn.breach.SustainedBreachDetector`. The first sustained
breach cancels every worker and fails the stage right away — a 12-hour soak stops
at minute 20 when the CPU cooks, not at hour 12.

Workers (each can be switched off in params):

- ``cpu``: stress-ng ``--cpu 0`` (all CPUs) with ``--verify``;
- ``memory``: stress-ng ``--vm`` over ``memory_fraction`` of the OOM-safe budget;
- ``storage``: fio random *reads* of a scratch file in the stage's workdir (never a
  disk device: writing disks is the Storage stage's business behind its gates);
- ``gpu``: the built-in bf16 burner on every GPU (``"auto"``: when a GPU and torch exist).

``breach_rules`` (list of mappings, see :class:`BreachRule`) replace the defaults.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import anyio

from vetting_core import hwmon
from vetting_core.context import StageContext, StageFailed
from vetting_core.model import Severity, ThresholdRule
from vetting_core.records import StageSpec
from vetting_core.tools import ToolNotFound

from ..cpu.runner import run_stress_ng
from ..cpu.sysfs import online_cpus, thermal_zones
from ..gpu.burner import backend as gpu_backend
from ..gpu.burner import parse_output as parse_burner
from ..gpu.detect import applies as gpu_applies
from ..memory.sizing import GIB, SizingError, plan_vm, read_meminfo, read_oom_kills
from .breach import Breach, BreachRule, SustainedBreachDetector

DEFAULT_RULES: tuple[dict[str, Any], ...] = (
    {"kind": "temperature", "key": "cpu/*", "op": "lte", "threshold": 95.0, "window_s": 30, "min_samples": 5,
     "name": "CPU temperature ≤ 95 °C"},
    {"kind": "gpu_temp", "key": "*/temp_c", "op": "lte", "threshold": 90.0, "window_s": 30, "min_samples": 5,
     "name": "GPU temperature ≤ 90 °C"},
    {"kind": "gpu_throttle", "key": "*/bad_reasons", "op": "lte", "threshold": 0, "window_s": 30,
     "min_samples": 10, "name": "no GPU hardware/thermal slowdown"},
    {"kind": "memory", "key": "oom_kill_delta", "op": "lte", "threshold": 0, "window_s": 0, "min_samples": 1,
     "name": "no OOM kill"},
)


def hwmon_temps(root: str | Path = hwmon.HWMON_ROOT) -> dict[str, float]:
    """hwmon temperatures in °C by ``<chip>/<label>`` (:mod:`vetting_core.hwmon`: the
    sidecar's keys and order)."""
    return {ch.key: value for ch, value in hwmon.read_all(root, kinds={"temp"})}


class _Burn:
    def __init__(self, ctx: StageContext, detector: SustainedBreachDetector) -> None:
        self.ctx = ctx
        self.detector = detector
        self.breach: Breach | None = None
        self.failures: list[str] = []
        self.scope: anyio.CancelScope | None = None
        self.samples = 0

    def record(self, kind: str, key: str, value: float | None, unit: str = "", text: str | None = None) -> None:
        """Record a sample and judge it at once (the stage subscribes to its own stream)."""
        self.ctx.measure(kind, key, value, unit, text=text)
        self.samples += 1
        hit = self.detector.feed(kind, key, value, time.monotonic())
        if hit and self.breach is None:
            self.breach = hit
            self.ctx.log(str(hit), level="error")
            if self.scope is not None:
                self.scope.cancel()

    def fail(self, why: str) -> None:
        self.failures.append(why)
        self.ctx.log(f"burn worker failed: {why}", level="error")
        if self.scope is not None and self.ctx.params.get("stop_on_worker_failure", True):
            self.scope.cancel()


async def _sampler(b: _Burn, interval: float, gpu_source: Any, gpu_count: int) -> None:
    oom0 = read_oom_kills()
    while True:
        for zone, c in thermal_zones().items():
            b.record("temperature", f"cpu/{zone}", c, "°C")
        for key, c in hwmon_temps().items():
            b.record("temperature", f"hwmon/{key}", c, "°C")
        try:
            b.record("memory", "mem_available_bytes", read_meminfo().get("MemAvailable"), "B")
        except OSError:
            pass
        oom = read_oom_kills()
        if oom is not None and oom0 is not None:
            b.record("memory", "oom_kill_delta", oom - oom0, "events")
        for i in range(gpu_count):
            try:
                t = await gpu_source.telemetry(i)
            except Exception as exc:  # noqa: BLE001 - a GPU gone from the bus shows here
                b.record("gpu_temp", f"gpu{i}/temp_c", None, "°C", text=f"telemetry failed: {exc}")
                continue
            if "temp_c" in t:
                b.record("gpu_temp", f"gpu{i}/temp_c", t["temp_c"], "°C")
            if "power_w" in t:
                b.record("gpu_power", f"gpu{i}/power_w", t["power_w"], "W")
            if "throttle" in t:
                from ..gpu.nvml import BAD_THROTTLE

                bad = set(t["throttle"]) & BAD_THROTTLE
                b.record("gpu_throttle", f"gpu{i}/bad_reasons", len(bad), "reasons", text=",".join(sorted(t["throttle"])) or None)
        await anyio.sleep(interval)


async def _cpu_worker(b: _Burn, duration: float) -> None:
    v = await run_stress_ng(b.ctx, {"cpu": 0}, duration_s=duration, tag="burn-cpu",
                            options=["--cpu-method", "all"], substeps=False, allow_zero_work=True)
    if v.verdict == "failed":
        b.fail(f"cpu: {v.reason}")


async def _memory_worker(b: _Burn, duration: float) -> None:
    p = b.ctx.params
    workers = max(1, online_cpus() // 2)
    try:
        plan = plan_vm(read_meminfo(), workers=workers, reserve_min_bytes=int(p.get("reserve_min_bytes", GIB)),
                       reserve_pct=float(p.get("reserve_pct", 10.0)), fraction=float(p.get("memory_fraction", 0.5)),
                       max_bytes=p.get("memory_max_bytes"))
    except SizingError as exc:
        b.ctx.log(f"memory worker skipped: {exc}", level="warning")
        return
    b.ctx.log(f"memory worker: {plan.describe()}")
    b.detector.add(BreachRule("memory", "mem_available_bytes", "gte", plan.reserve_bytes / 2, window_s=2,
                              min_samples=2, name="MemAvailable above half the reserve"))
    v = await run_stress_ng(b.ctx, {"vm": workers}, duration_s=duration, tag="burn-memory",
                            options=["--vm-bytes", str(plan.per_worker_bytes), "--vm-keep"], substeps=False,
                            allow_zero_work=True)
    if v.verdict == "failed":
        b.fail(f"memory: {v.reason}")


async def _storage_worker(b: _Burn, duration: float) -> None:
    ctx = b.ctx
    size = str(ctx.params.get("storage_file_size", "256M"))
    path = Path(ctx.workdir) / "burn-fio.dat"
    base = ["fio", "--name=burn-read", f"--filename={path}", f"--size={size}", "--rw=randread", "--bs=4k",
            "--iodepth=16", "--ioengine=libaio", "--time_based", f"--runtime={max(1, int(duration))}",
            "--output-format=json"]
    try:
        res = await ctx.run_tool([*base, "--direct=1"], timeout=duration + 300)
        if res.returncode != 0 and ("direct" in (res.stderr + res.stdout).lower() or "Invalid argument" in res.stderr):
            res = await ctx.run_tool([*base, "--direct=0"], timeout=duration + 300)  # tmpfs has no O_DIRECT
    except ToolNotFound:
        ctx.log("storage worker skipped: fio is not installed", level="warning")
        return
    finally:
        path.unlink(missing_ok=True)
    ctx.save_text("fio-json", "burn-fio.json", res.stdout)
    try:
        start = res.stdout.find("{")
        doc = json.loads(res.stdout[start:]) if start >= 0 else {}
        job = (doc.get("jobs") or [{}])[0]
        err = int(job.get("error", 0))
        iops = float((job.get("read") or {}).get("iops", 0.0))
    except (ValueError, TypeError):
        b.fail(f"storage: fio output unreadable (exit {res.returncode}): {res.stderr.strip()[:200]}")
        return
    b.record("storage", "burn/read_iops", iops, "IOPS")
    if err or res.returncode != 0:
        b.fail(f"storage: fio error {err} (exit {res.returncode}) {res.stderr.strip()[:200]}")


async def _gpu_worker(b: _Burn, duration: float, count: int) -> None:
    async def one(i: int) -> None:
        argv = [sys.executable, "-m", "vetting_stages.gpu.burner", "--device", str(i), "--seconds", str(duration)]
        res = await b.ctx.run_tool(argv, timeout=duration + 300, stream=True)
        _, final = parse_burner(res.stdout)
        if final is None or final.get("error"):
            b.fail(f"gpu{i}: {final.get('error') if final else 'burner printed no result'}")
        elif final.get("errors"):
            b.fail(f"gpu{i}: {final['errors']} computation errors")
        else:
            b.record("gpu_burn", f"gpu{i}/tflops", final.get("tflops_sustained"), "TFLOP/s")

    async with anyio.create_task_group() as tg:
        for i in range(count):
            tg.start_soon(one, i)


async def run(ctx: StageContext) -> None:
    p = ctx.params
    duration = float(p.get("duration_s", 300))
    rules = p.get("breach_rules") or DEFAULT_RULES
    try:
        detector = SustainedBreachDetector.from_config(rules)
    except (KeyError, ValueError, TypeError) as exc:
        raise StageFailed(f"invalid breach_rules: {exc}") from None
    b = _Burn(ctx, detector)
    gpu_source, gpu_count = None, 0
    want_gpu = p.get("gpu", "auto")
    if want_gpu and gpu_applies(ctx.inventory) is None:
        from ..gpu.sources import open_source

        gpu_source, why = await open_source()
        if gpu_source is not None:
            gpu_count = await gpu_source.count()
        elif want_gpu is True:
            raise StageFailed(f"GPU burn requested but GPUs unusable: {why}")
    workers = []
    if p.get("cpu", True):
        workers.append(("cpu", _cpu_worker, ()))
    if p.get("memory", True):
        workers.append(("memory", _memory_worker, ()))
    if p.get("storage", True):
        workers.append(("storage", _storage_worker, ()))
    if gpu_count and gpu_backend():
        workers.append(("gpu", _gpu_worker, (gpu_count,)))
    elif gpu_count:
        ctx.log("GPUs present but no torch/cupy: GPU not burned here (the GPU stage covers it)", level="warning")
    ctx.summary["workers"] = [w[0] for w in workers]
    ctx.summary["rules"] = [r.describe() for r in detector.rules]
    started = time.monotonic()
    try:
        async with anyio.create_task_group() as tg:
            b.scope = tg.cancel_scope
            tg.start_soon(_sampler, b, float(p.get("sample_interval_s", 1.0)), gpu_source, gpu_count)

            async def progress() -> None:
                while True:
                    await anyio.sleep(max(1.0, duration / 100))
                    ctx.progress(min(1.0, (time.monotonic() - started) / duration), "burn")

            tg.start_soon(progress)
            async with anyio.create_task_group() as wg:
                for _, fn, extra in workers:
                    wg.start_soon(fn, b, duration, *extra)
            tg.cancel_scope.cancel()  # workers done: stop the sampler
    finally:
        if gpu_source is not None:
            gpu_source.close()
    elapsed = time.monotonic() - started
    ctx.summary.update(elapsed_s=round(elapsed, 1), samples=b.samples)
    if b.breach is not None:
        ctx.summary["breach"] = str(b.breach)
        raise StageFailed(f"{b.breach} (stopped after {elapsed:.0f}s of {duration:.0f}s)")
    if b.failures:
        raise StageFailed("; ".join(b.failures))


STAGE = StageSpec(
    name="Burn",
    run=run,
    order=900,
    description="CPU + memory + read-only storage + GPU stress together; sustained breaches fail it while it runs.",
    params={
        "*": {"cpu": True, "memory": True, "storage": True, "gpu": "auto", "memory_fraction": 0.5,
              "sample_interval_s": 1.0, "storage_file_size": "256M"},
        "quick": {"duration_s": 180, "memory_fraction": 0.25},
        "deep": {"duration_s": 900},
        "soak": {"duration_s": 12 * 3600, "storage_file_size": "1G"},
    },
    thresholds=(
        ThresholdRule(kind="temperature", key="cpu/*", op="lte", threshold=95.0, unit="°C", severity=Severity.warning),
        ThresholdRule(kind="memory", key="oom_kill_delta", op="lte", threshold=0, unit="events"),
    ),
    timeout_s=14 * 3600.0,
)
