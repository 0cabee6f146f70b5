"""How hard does the GPU stage's built-in burner load the GPU?

Runs, on one GPU and in the same process, (1) torch's plain bf16 matmul peak — the
best rate of back-to-back ``torch.matmul`` over a few sizes, timed with CUDA events
— and (2) the built-in burner (:mod:`vetting_stages.gpu.burner`) for a fixed time,
then prints both and their ratio. The issue's target is burner/peak ≥ 0.90.

    .venv/bin/python bench/gpu_burn.py [--device 0] [--seconds 60] [--size 8192]

Needs torch with CUDA (``pip install torch``). Without a GPU it says so and exits 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def torch_peak(device: int, sizes: list[int], seconds_each: float) -> tuple[float, int]:
    import torch

    dev = torch.device(f"cuda:{device}")
    best, best_n = 0.0, 0
    for n in sizes:
        a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
        b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
        for _ in range(3):  # warm-up: cuBLAS heuristics, clocks
            torch.matmul(a, b)
        torch.cuda.synchronize(dev)
        iters, total_ms, deadline = 0, 0.0, time.monotonic() + seconds_each
        while time.monotonic() < deadline:
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            for _ in range(10):
                torch.matmul(a, b)
            e.record()
            e.synchronize()
            total_ms += s.elapsed_time(e)
            iters += 10
        rate = 2.0 * n**3 * iters / (total_ms / 1000.0) / 1e12
        print(f"  torch.matmul bf16 {n}x{n}: {rate:.1f} TFLOP/s ({iters} iterations)", flush=True)
        if rate > best:
            best, best_n = rate, n
        del a, b
        torch.cuda.empty_cache()
    return best, best_n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=60.0, help="burner run length")
    ap.add_argument("--size", type=int, default=0, help="burner matrix size (0: burner picks, as in the stage)")
    ap.add_argument("--peak-sizes", default="4096,8192,16384")
    ap.add_argument("--peak-seconds", type=float, default=5.0, help="per size")
    args = ap.parse_args()
    try:
        import torch
    except ImportError:
        print("torch is not installed: no GPU benchmark possible here")
        return 2
    if not torch.cuda.is_available():
        print("no CUDA GPU visible to torch: no GPU benchmark possible here")
        return 2
    from vetting_stages.gpu import burner
    from vetting_stages.gpu.nominal import lookup

    name = torch.cuda.get_device_name(args.device)
    print(f"GPU {args.device}: {name}; torch {torch.__version__}, CUDA {torch.version.cuda}")
    print("1) torch plain bf16 matmul peak")
    peak, peak_n = torch_peak(args.device, [int(s) for s in args.peak_sizes.split(",")], args.peak_seconds)
    print(f"2) built-in burner, {args.seconds:.0f}s (size {args.size or 'auto'})")
    intervals: list[dict] = []
    result = burner.burn_torch(args.device, args.seconds, args.size, 5.0, 1.0, intervals.append)
    rates = ", ".join(f"{r['tflops']:.0f}" for r in intervals)
    print(f"  size {result['size']}; intervals: {rates}")
    ratio = result["tflops_sustained"] / peak if peak else 0.0
    sku = lookup(name)
    print()
    print(f"torch bf16 matmul peak : {peak:8.1f} TFLOP/s (n={peak_n})")
    print(f"burner sustained       : {result['tflops_sustained']:8.1f} TFLOP/s "
          f"(min {result['tflops_min']:.1f}, max {result['tflops_max']:.1f}; {result['errors']} errors, {result['checks']} checks)")
    print(f"ratio burner/peak      : {ratio:8.3f}  (target >= 0.90: {'OK' if ratio >= 0.9 else 'BELOW'})")
    if sku:
        print(f"datasheet dense bf16   : {sku.spec_bf16:8.1f} TFLOP/s ({sku.name}); peak is "
              f"{peak / sku.spec_bf16:.0%} of it, table assumes {sku.achievable:.0%}")
    print(json.dumps({"gpu": name, "peak_tflops": round(peak, 2), "peak_n": peak_n,
                      "burner_tflops": result["tflops_sustained"], "ratio": round(ratio, 4),
                      "errors": result["errors"]}))
    return 0 if ratio >= 0.9 and result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
