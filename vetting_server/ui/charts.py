"""Live sensor charts of a run, drawn by the report's own chart code.

The report (:mod:`vetting_reports`) draws its charts from chart documents —
``{title, unit, lines: [{key, points: [[t, mean, min, max], ...]}], limits, stages}`` —
with :func:`vetting_reports.render.chart_geometry` and the ``chart`` macro of its
``_macros.html.j2``. The run page builds the same documents from the database while
the run is live (:func:`.queries.buckets`: the database averages the samples into
about 120 time buckets per series) and renders them with that same geometry and macro,
so a chart on the page and in the report look and scale alike.
"""

from __future__ import annotations

from typing import Any

from vetting_reports.build import chart_limits
from vetting_reports.render import chart_geometry
from vetting_reports.series import CHART_PRIORITY, MAX_LINES

from ..db.database import as_dt, utcnow
from . import queries

MAX_CHARTS = 6


def _priority(kind: str) -> int:
    return next((i for i, needle in enumerate(CHART_PRIORITY) if needle in kind.lower()), len(CHART_PRIORITY))


async def live_charts(rt: Any, run: dict[str, Any], stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chart geometries (ready for the ``chart`` macro) of ``run`` so far."""
    t0 = as_dt(run["started_at"])
    end = as_dt(run["completed_at"]) or utcnow()
    size = queries.bucket_size((end - t0).total_seconds())
    rows = await queries.buckets(rt.db, int(run["id"]), t0, size)
    by_chart: dict[tuple[str, str], dict[str, list[list[float]]]] = {}
    counts: dict[tuple[str, str, str], int] = {}
    for r in rows:
        points = by_chart.setdefault((r["kind"], r["unit"]), {}).setdefault(r["key"], [])
        points.append([round((int(r["b"]) + 0.5) * size, 3), float(r["mean"]), float(r["lo"]), float(r["hi"])])
        counts[(r["kind"], r["unit"], r["key"])] = counts.get((r["kind"], r["unit"], r["key"]), 0) + int(r["n"])
    limits = chart_limits((await rt.engine(int(run["id"]))).rules)
    spans = [
        {"name": s["name"], "verdict": s["state"], "start_s": queries.seconds(t0, s["started_at"]),
         "end_s": queries.seconds(t0, s["completed_at"])}
        for s in stages if s["started_at"] is not None
    ]
    docs = []
    for (kind, unit), lines in sorted(by_chart.items(), key=lambda kv: (_priority(kv[0][0]), kv[0])):
        drawn = [(k, p) for k, p in lines.items() if len(p) >= 2]
        if not drawn:
            continue
        drawn.sort(key=lambda kp: -max(x[3] for x in kp[1]))
        shown = sorted(drawn[:MAX_LINES])
        docs.append({
            "id": f"live-chart-{len(docs)}", "title": f"{kind} ({unit})" if unit else kind, "unit": unit,
            "lines": [{"key": k, "points": p, "peak": max(x[3] for x in p), "count": counts[(kind, unit, k)]} for k, p in shown],
            "hidden_lines": len(drawn) - len(shown),
            "limits": [lim for lim in limits if lim["kind"] == kind],
            "stages": spans,
        })
        if len(docs) >= MAX_CHARTS:
            break
    return [chart_geometry(d) for d in docs]
