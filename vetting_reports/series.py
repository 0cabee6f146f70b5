"""Summaries and chart data for the measurement series of a run.

A run may carry millions of samples; the report keeps only, per series
``(stage, kind, key, unit)``, min/median/max/mean/count (plus the last and distinct
values of textual samples), and for the charts a downsampled copy of the sensor-like
series: at most ``MAX_POINTS`` buckets per line, each bucket keeping its mean, min and
max so that a one-sample spike stays visible after downsampling.

Everything here is one pass of grouping in Python plus C-level list operations per
series (slicing, ``min``, ``max``, ``sum``, ``sorted``): the whole of it is measured
in ``bench/report.py``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from datetime import datetime
from operator import attrgetter
from typing import Any

from vetting_core.model import Measurement

from .timefmt import iso, utc

MAX_POINTS = 240  # buckets per chart line
MAX_LINES = 8  # lines per chart (the rest stay in the summary table)
MAX_CHARTS = 12
MAX_DISTINCT_TEXT = 10
_INF = float("inf")

# chart kinds, most interesting first; matched as substrings of the measurement kind
CHART_PRIORITY = (
    "temp",
    "power",
    "watt",
    "throughput",
    "bandwidth",
    "iops",
    "fan",
    "volt",
    "freq",
    "clock",
    "util",
)

SeriesKey = tuple[str, str, str, str]  # stage, kind, key, unit
_SERIES_KEY = attrgetter("stage", "kind", "key", "unit")
_TS, _VALUE, _TEXT = attrgetter("ts"), attrgetter("value"), attrgetter("text")


class SeriesData:
    """The samples of one series, in time order (kept only while the report is built)."""

    __slots__ = ("key", "ts", "values", "texts")

    def __init__(self, key: SeriesKey, samples: list[Measurement]) -> None:
        # ingestion order is usually time order, which timsort checks in one C-level
        # pass; the sort is stable, so samples with equal times keep their order
        samples.sort(key=_TS)
        self.key = key
        self.ts = list(map(_TS, samples))
        self.values = list(map(_VALUE, samples))
        self.texts = list(map(_TEXT, samples))


def group(measurements: Sequence[Measurement]) -> dict[SeriesKey, SeriesData]:
    groups: dict[SeriesKey, list[Measurement]] = {}
    get = groups.get
    # the key tuples are built by attrgetter in C; the loop only files samples
    for k, m in zip(map(_SERIES_KEY, measurements), measurements):
        g = get(k)
        if g is None:
            groups[k] = [m]
        else:
            g.append(m)
    return {k: SeriesData(k, g) for k, g in groups.items()}


def finite(values: list[Any]) -> list[float]:
    """The finite numbers of ``values`` (no None, NaN or ±inf), in order."""
    if None not in values:  # the usual case: filter in C
        return list(filter(math.isfinite, values))
    return [v for v in values if v is not None and math.isfinite(v)]


def _invalid(data: SeriesData, nums: list[float]) -> int:
    """Samples with neither a finite value nor a text: a sensor that printed garbage."""
    if data.texts.count(None) == len(data.texts):
        return len(data.values) - len(nums)
    return sum(
        1 for v, t in zip(data.values, data.texts) if t is None and (v is None or not math.isfinite(v))
    )


def summarise(data: SeriesData) -> dict[str, Any]:
    stage, kind, key, unit = data.key
    nums = finite(data.values)
    doc: dict[str, Any] = {
        "stage": stage,
        "kind": kind,
        "key": key,
        "unit": unit,
        "count": len(data.values),
        "numeric_count": len(nums),
        "invalid_count": _invalid(data, nums),
        "min": None,
        "median": None,
        "max": None,
        "mean": None,
        "first": None,
        "last": None,
        "first_ts": iso(data.ts[0]) if data.ts else None,
        "last_ts": iso(data.ts[-1]) if data.ts else None,
        "text": None,
    }
    if nums:
        doc.update(
            min=min(nums),
            median=statistics.median(nums),
            max=max(nums),
            mean=sum(nums) / len(nums),
            first=nums[0],
            last=nums[-1],
        )
    texts = [t for t in data.texts if t is not None]
    if texts:
        distinct: list[str] = []
        seen: set[str] = set()
        for t in texts:
            if t not in seen:
                seen.add(t)
                if len(distinct) < MAX_DISTINCT_TEXT:
                    distinct.append(t)
        doc["text"] = {
            "count": len(texts),
            "last": texts[-1],
            "distinct": distinct,
            "distinct_count": len(seen),
        }
    return doc


def _priority(kind: str) -> int:
    k = kind.lower()
    for i, needle in enumerate(CHART_PRIORITY):
        if needle in k:
            return i
    return len(CHART_PRIORITY)


def downsample(
    ts: list[datetime], values: list[Any], t0: datetime, max_points: int = MAX_POINTS
) -> list[list[float]]:
    """``[[t_seconds, mean, min, max], ...]`` with at most ``max_points`` buckets of equal
    sample count; samples without a finite value are left out of their bucket."""
    n = len(values)
    if n == 0:
        return []
    buckets = min(max_points, n)
    step = n / buckets
    base = utc(t0)
    out: list[list[float]] = []
    for b in range(buckets):
        lo, hi = int(b * step), int((b + 1) * step)
        if hi <= lo:
            continue
        chunk = finite(values[lo:hi])
        if not chunk:
            continue
        mid = ts[(lo + hi - 1) // 2]
        t = round((utc(mid) - base).total_seconds(), 3)
        out.append([t, round(sum(chunk) / len(chunk), 6), min(chunk), max(chunk)])
    return out


def charts(
    groups: dict[SeriesKey, SeriesData],
    t0: datetime,
    stage_spans: list[dict[str, Any]],
    thresholds: list[dict[str, Any]],
    peaks: dict[SeriesKey, float | None] | None = None,
) -> list[dict[str, Any]]:
    """Chart documents: one per ``(kind, unit)``, one line per ``key`` across all stages.

    ``peaks`` (each series' max, from the summaries) picks the ``MAX_LINES`` keys to draw
    before any downsampling, so a run with thousands of sensors costs no more than one
    with eight per kind.
    """
    by_chart: dict[tuple[str, str], dict[str, list[SeriesData]]] = {}
    for (_stage, kind, key, unit), data in groups.items():
        if len(data.values) < 3:
            continue
        by_chart.setdefault((kind, unit), {}).setdefault(key, []).append(data)
    ranked = sorted(by_chart.items(), key=lambda kv: (_priority(kv[0][0]), kv[0][0], kv[0][1]))
    out: list[dict[str, Any]] = []
    for (kind, unit), lines_by_key in ranked:
        if peaks is not None:

            def key_peak(item: tuple[str, list[SeriesData]]) -> tuple[float, str]:
                vals = [peaks.get(d.key) for d in item[1]]
                nums = [v for v in vals if v is not None]
                return (-max(nums) if nums else _INF, item[0])

            candidates = sorted(lines_by_key.items(), key=key_peak)
            numeric = [kv for kv in candidates if key_peak(kv)[0] != _INF]
            chosen, hidden = numeric[:MAX_LINES], max(0, len(numeric) - MAX_LINES)
        else:
            chosen, hidden = list(lines_by_key.items()), 0
        lines = []
        for key, parts in chosen:
            parts.sort(key=lambda d: d.ts[0])
            ts: list[datetime] = []
            values: list[Any] = []
            for d in parts:
                ts.extend(d.ts)
                values.extend(d.values)
            # each part is sorted; only overlapping stages need a full re-sort
            if any(b.ts[0] < a.ts[-1] for a, b in zip(parts, parts[1:])):
                order = sorted(range(len(ts)), key=ts.__getitem__)
                ts = [ts[i] for i in order]
                values = [values[i] for i in order]
            points = downsample(ts, values, t0)
            if len(points) < 2:
                continue
            lines.append(
                {
                    "key": key,
                    "stages": [d.key[0] for d in parts],
                    "count": len(values),
                    "peak": max(p[3] for p in points),
                    "points": points,
                }
            )
        if not lines:
            continue
        if peaks is None:
            lines.sort(key=lambda line: (-line["peak"], line["key"]))
            hidden = max(0, len(lines) - MAX_LINES)
            lines = lines[:MAX_LINES]
        lines.sort(key=lambda line: line["key"])
        limits = [t for t in thresholds if t["kind"] == kind and isinstance(t.get("value"), (int, float))]
        out.append(
            {
                "id": f"chart-{len(out)}",
                "title": f"{kind} ({unit})" if unit else kind,
                "kind": kind,
                "unit": unit,
                "t0": iso(t0),
                "lines": lines,
                "hidden_lines": hidden,
                "limits": limits,
                "stages": stage_spans,
            }
        )
        if len(out) >= MAX_CHARTS:
            break
    return out
