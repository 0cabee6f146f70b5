"""Run the GPU stage on this machine, outside any run: one command on a GPU server.

    python -m vetting_stages.gpu [--profile quick] [--duration 60] [--backend auto|dcgmi|gpu_burn|builtin]

Prints the verdict, each GPU's sub-step and the stage summary as JSON; exit status
0 passed, 1 failed, 2 skipped. Needs ``nvidia-ml-py`` (``pip install 'vetting[gpu]'``)
or ``nvidia-smi``, and for the built-in burner torch with CUDA.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import anyio

from vetting_core.context import MemorySink, build_context, execute_stage
from vetting_core.model import Verdict

from .stage import STAGE


async def _main(args: argparse.Namespace) -> int:
    params = STAGE.params_for(args.profile)
    if args.duration:
        params["duration_s"] = args.duration
        params["tflops_duration_s"] = min(args.duration, 60)
    if args.backend:
        params["backend"] = args.backend
    sink = MemorySink()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="vetting-gpu-"))
    ctx = build_context(STAGE.name, sink=sink, workdir=workdir, params=params, profile=args.profile)
    result = await execute_stage(STAGE, ctx)
    print(f"GPU stage: {result.verdict.value}" + (f" — {result.reason}" if result.reason else ""))
    for step in result.substeps:
        print(f"  {step.name}: {step.state.value}" + (f" — {step.reason}" if step.reason else ""))
        print(f"    {json.dumps(step.summary, default=str)}")
    print(json.dumps({"summary": result.summary, "samples": len(sink.samples), "workdir": str(workdir)}, default=str))
    return {Verdict.passed: 0, Verdict.failed: 1}.get(result.verdict, 2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick", choices=["quick", "deep", "soak"])
    ap.add_argument("--duration", type=float, default=None, help="burn seconds (default: the profile's)")
    ap.add_argument("--backend", default=None, choices=["auto", "dcgmi", "gpu_burn", "builtin"])
    ap.add_argument("--workdir", default=None)
    return anyio.run(_main, ap.parse_args())


if __name__ == "__main__":
    sys.exit(main())
