"""Boot timeline of the live image, PXE-booted through a BMC: power-on → DHCP → iPXE
script → kernel → agent hello → claim, in seconds after the power-on.

Runs the end-to-end test (``tests/e2e/test_pxe_live.py``; QEMU under TCG, the image
from the machine's cache, built first when missing) ``--runs`` times and prints each
run's timeline and the median of every milestone. ``--from FILE`` prints the timelines
an earlier run wrote (``VETTING_E2E_TIMELINE=FILE`` when running the tests).

    python bench/pxe_boot.py                   # the ipmi case once
    python bench/pxe_boot.py --runs 3 --case redfish
    python bench/pxe_boot.py --from /tmp/timelines.jsonl

Goal (issue 16): power-on to claim ≤ 45 s under TCG on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.timeline import format_timeline  # noqa: E402

GOAL_S = 45.0
TEST = "tests/e2e/test_pxe_live.py"


def run_cases(case: str, runs: int, out: Path) -> None:
    for i in range(runs):
        env = {**os.environ, "VETTING_E2E_TIMELINE": str(out)}
        argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"{TEST}", "-k", case, "-m", "e2e"]
        print(f"run {i + 1}/{runs}: {' '.join(argv[2:])}", flush=True)
        res = subprocess.run(argv, cwd=REPO, env=env)
        if res.returncode != 0:
            raise SystemExit(f"the end-to-end test failed (exit {res.returncode}): no timeline from it")


def report(path: Path) -> None:
    docs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not docs:
        raise SystemExit(f"{path}: no timelines")
    per_step: dict[str, list[float]] = {}
    for doc in docs:
        print(f"\n{doc['case']} (test wall time {doc['test_wall_s']} s):")
        print(format_timeline([tuple(s) for s in doc["steps"]]))
        for name, t in doc["steps"]:
            per_step.setdefault(name, []).append(t)
    medians = [(name, statistics.median(ts)) for name, ts in per_step.items()]
    print(f"\nmedian of {len(docs)} run(s):")
    print(format_timeline(sorted(medians, key=lambda s: s[1])))
    claim = dict(medians).get("run claimed")
    if claim is not None:
        print(f"\npower-on → claim: {claim:.1f} s (goal ≤ {GOAL_S:.0f} s: {'met' if claim <= GOAL_S else 'not met'})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--case", choices=["ipmi", "redfish"], default="ipmi")
    ap.add_argument("--from", dest="src", type=Path, help="print the timelines in this file instead of running")
    args = ap.parse_args()
    if args.src:
        report(args.src)
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "timelines.jsonl"
        run_cases(args.case, args.runs, out)
        report(out)


if __name__ == "__main__":
    main()
