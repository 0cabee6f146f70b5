"""Built-in GPU burner: back-to-back bf16 matrix multiplies with result checking.

The last link of the burn backend chain (after ``dcgmi diag`` and ``gpu_burn``),
used when torch (or cupy) is importable. It keeps the tensor cores saturated with
large bf16 GEMMs written into a preallocated output, measures the sustained rate
with CUDA events, and every ``check_s`` compares the output bit-for-bit with the
first result: cuBLAS produces identical bits for identical inputs on the same GPU,
so any difference is a computation error (the same idea as gpu_burn's compare).

Run as a program so that a hung or crashed GPU kills only this process::

    python -m vetting_stages.gpu.burner --device 0 --seconds 60 [--size 0 (auto) | 8192 ...]

It prints one JSON object per interval (``{"t": s, "tflops": x, "errors": n}``) and
a final ``{"final": true, ...}``; exit status 0 only when it ran and found no errors.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any


def backend() -> str | None:
    """``"torch"`` or ``"cupy"`` when importable with a CUDA device, else None."""
    try:
        import torch

        if torch.cuda.is_available():
            return "torch"
    except Exception:  # noqa: BLE001 - a broken torch install is "not available"
        pass
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return "cupy"
    except Exception:  # noqa: BLE001
        pass
    return None


def matmul_flops(n: int) -> float:
    return 2.0 * n * n * n


def pick_size_torch(dev, candidates: tuple[int, ...] = (8192, 12288, 16384), probe_s: float = 0.5) -> int:
    """The GEMM size that runs fastest on this GPU (bigger is not always better)."""
    import torch

    best, best_rate = candidates[0], 0.0
    free, _ = torch.cuda.mem_get_info(dev)
    for n in candidates:
        if 3 * n * n * 2 > free * 0.8:
            continue
        a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
        b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
        out = torch.empty_like(a)
        torch.matmul(a, b, out=out)
        torch.cuda.synchronize(dev)
        iters, ms = 0, 0.0
        deadline = time.monotonic() + probe_s
        while time.monotonic() < deadline:
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            for _ in range(4):
                torch.matmul(a, b, out=out)
            e.record()
            e.synchronize()
            ms += s.elapsed_time(e)
            iters += 4
        rate = matmul_flops(n) * iters / (ms / 1000.0) if ms else 0.0
        if rate > best_rate:
            best, best_rate = n, rate
        del a, b, out
    torch.cuda.empty_cache()
    return best


def burn_torch(device: int, seconds: float, size: int, check_s: float, interval_s: float, emit) -> dict[str, Any]:
    """``size <= 0`` picks the fastest GEMM size for this GPU first."""
    import torch

    dev = torch.device(f"cuda:{device}")
    torch.cuda.set_device(dev)
    if size <= 0:
        size = pick_size_torch(dev)
    gen = torch.Generator(device=dev).manual_seed(1234 + device)
    a = torch.randn(size, size, device=dev, dtype=torch.bfloat16, generator=gen)
    b = torch.randn(size, size, device=dev, dtype=torch.bfloat16, generator=gen)
    out = torch.empty(size, size, device=dev, dtype=torch.bfloat16)
    torch.matmul(a, b, out=out)
    ref = out.clone()
    torch.cuda.synchronize(dev)
    flops = matmul_flops(size)
    # find a batch that takes ~50 ms so Python overhead and event sync are negligible
    batch = 1
    while True:
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(batch):
            torch.matmul(a, b, out=out)
        e.record()
        e.synchronize()
        if s.elapsed_time(e) >= 50.0 or batch >= 4096:
            break
        batch *= 2
    rates: list[float] = []
    errors = 0
    checks = 0
    iters = 0
    start = time.monotonic()
    last_check = start
    t_interval = start
    gpu_ms = 0.0
    flop_interval = 0.0
    while time.monotonic() - start < seconds:
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(batch):
            torch.matmul(a, b, out=out)
        e.record()
        e.synchronize()
        gpu_ms += s.elapsed_time(e)
        flop_interval += flops * batch
        iters += batch
        now = time.monotonic()
        if now - last_check >= check_s:
            checks += 1
            bad = int((out != ref).sum().item())
            errors += bad
            last_check = now
        if now - t_interval >= interval_s:
            tflops = flop_interval / (gpu_ms / 1000.0) / 1e12 if gpu_ms else 0.0
            rates.append(tflops)
            emit({"t": round(now - start, 3), "tflops": round(tflops, 2), "errors": errors})
            gpu_ms, flop_interval, t_interval = 0.0, 0.0, now
    checks += 1
    errors += int((out != ref).sum().item())
    name = torch.cuda.get_device_name(dev)
    steady = rates[1:] if len(rates) > 2 else rates
    return {
        "final": True,
        "backend": "torch",
        "device": device,
        "name": name,
        "size": size,
        "seconds": round(time.monotonic() - start, 3),
        "iterations": iters,
        "checks": checks,
        "errors": errors,
        "tflops_sustained": round(statistics.median(steady), 2) if steady else 0.0,
        "tflops_min": round(min(steady), 2) if steady else 0.0,
        "tflops_max": round(max(steady), 2) if steady else 0.0,
    }


def burn_cupy(device: int, seconds: float, size: int, check_s: float, interval_s: float, emit) -> dict[str, Any]:
    import cupy

    # cupy has no bf16 GEMM: fall back to fp16 tensor-core GEMMs (same loading idea)
    with cupy.cuda.Device(device):
        rs = cupy.random.RandomState(1234 + device)
        a = rs.standard_normal((size, size), dtype=cupy.float32).astype(cupy.float16)
        b = rs.standard_normal((size, size), dtype=cupy.float32).astype(cupy.float16)
        out = cupy.empty((size, size), dtype=cupy.float16)
        cupy.matmul(a, b, out=out)
        ref = out.copy()
        flops = matmul_flops(size)
        rates, errors, checks, iters = [], 0, 0, 0
        start = last_check = t_interval = time.monotonic()
        gpu_ms = flop_interval = 0.0
        while time.monotonic() - start < seconds:
            s, e = cupy.cuda.Event(), cupy.cuda.Event()
            s.record()
            for _ in range(8):
                cupy.matmul(a, b, out=out)
            e.record()
            e.synchronize()
            gpu_ms += cupy.cuda.get_elapsed_time(s, e)
            flop_interval += flops * 8
            iters += 8
            now = time.monotonic()
            if now - last_check >= check_s:
                checks += 1
                errors += int((out != ref).sum())
                last_check = now
            if now - t_interval >= interval_s:
                tflops = flop_interval / (gpu_ms / 1000.0) / 1e12 if gpu_ms else 0.0
                rates.append(tflops)
                emit({"t": round(now - start, 3), "tflops": round(tflops, 2), "errors": errors})
                gpu_ms, flop_interval, t_interval = 0.0, 0.0, now
        steady = rates[1:] if len(rates) > 2 else rates
        return {
            "final": True, "backend": "cupy-fp16", "device": device, "name": "",
            "size": size, "seconds": round(time.monotonic() - start, 3), "iterations": iters,
            "checks": checks + 1, "errors": errors + int((out != ref).sum()),
            "tflops_sustained": round(statistics.median(steady), 2) if steady else 0.0,
            "tflops_min": round(min(steady), 2) if steady else 0.0,
            "tflops_max": round(max(steady), 2) if steady else 0.0,
        }


def parse_output(text: str) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The burner's stdout → (interval records, final record or None). Pure."""
    intervals: list[dict[str, Any]] = []
    final: dict[str, Any] | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(obj, dict):
            continue
        if obj.get("final"):
            final = obj
        elif "tflops" in obj:
            intervals.append(obj)
    return intervals, final


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--size", type=int, default=0, help="GEMM size; 0 = fastest of 8192/12288/16384")
    ap.add_argument("--check-s", type=float, default=5.0)
    ap.add_argument("--interval-s", type=float, default=1.0)
    args = ap.parse_args(argv)
    which = backend()
    if which is None:
        print(json.dumps({"final": True, "error": "neither torch nor cupy with CUDA is available"}))
        return 3

    def emit(obj: dict[str, Any]) -> None:
        print(json.dumps(obj), flush=True)

    fn = burn_torch if which == "torch" else burn_cupy
    try:
        result = fn(args.device, args.seconds, args.size, args.check_s, args.interval_s, emit)
    except Exception as exc:  # noqa: BLE001 - report the CUDA error as the verdict
        emit({"final": True, "error": f"{type(exc).__name__}: {exc}"})
        return 2
    emit(result)
    return 0 if result["errors"] == 0 and result["iterations"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
