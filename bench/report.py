"""Report generation speed: JSON + HTML for a synthetic run with 1,000,000 samples.

Usage: ``python bench/report.py [SAMPLES] [REPEATS]`` (defaults 1,000,000 and 3).

Prints the median of REPEATS runs of ``build_report`` + JSON encoding + ``render_html``
(the target is < 3 s on the 2-core development machine), each part separately, the
OCPTV export for reference, and a baseline measured in the same process: one plain
Python pass that reads every sample's series key and value — the least any
summariser has to do — so the ratio says how far above that floor the report is.
"""

from __future__ import annotations

import statistics
import sys
import time

import msgspec

from vetting_reports import build_report, ocptv_lines, render_html
from vetting_reports.demo import demo_record


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    samples = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    t_gen, record = timed(lambda: demo_record(samples, failed=True))
    n = len(record.measurements)
    print(
        f"synthetic run: {n:,} measurements in {len({(m.stage, m.kind, m.key) for m in record.measurements})} series "
        f"(generated in {t_gen:.1f} s)"
    )

    def baseline():
        seen = {}
        for m in record.measurements:
            seen[(m.stage, m.kind, m.key, m.unit)] = m.value
        return seen

    base, build, encode, html, total, ocptv = [], [], [], [], [], []
    for _ in range(repeats):
        base.append(timed(baseline)[0])
        tb, report = timed(lambda: build_report(record))
        te, body = timed(lambda r=report: msgspec.json.encode(r))
        th, page = timed(lambda r=report: render_html(r))
        build.append(tb)
        encode.append(te)
        html.append(th)
        total.append(tb + te + th)
        ocptv.append(timed(lambda: sum(1 for _ in ocptv_lines(record)))[0])
    med = statistics.median
    print(f"baseline (one pass over the samples): {med(base):.3f} s")
    print(f"build_report:                         {med(build):.3f} s")
    print(f"JSON encode ({len(body) / 1e3:.0f} kB):                 {med(encode):.3f} s")
    print(f"render_html ({len(page) / 1e3:.0f} kB):                {med(html):.3f} s")
    print(
        f"JSON + HTML total (median of {repeats}):     {med(total):.3f} s  "
        f"({med(total) / med(base):.1f}x baseline; target < 3 s)"
    )
    print(f"OCPTV JSONL (for reference):          {med(ocptv):.3f} s")
    print(f"all runs, total: {', '.join(f'{t:.3f}' for t in total)} s")


if __name__ == "__main__":
    main()
