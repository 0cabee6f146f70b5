"""``render_html``: the self-contained HTML report.

One file with inline CSS and inline SVG charts and no script or external asset (a
Content-Security-Policy meta tag forbids loading any), so it can be mailed, attached
to a ticket or opened from an air-gapped jump host. Jinja2 autoescaping is on for all
data; only plugin sections' ``html`` (declared trusted by the hook contract) is
inserted as-is. The chart geometry is computed here, from the report's ``charts``
data, so the template only places numbers.
"""

from __future__ import annotations

import functools
import math
from fnmatch import fnmatchcase
from typing import Any

import jinja2

W, H = 760, 240
PAD_L, PAD_R, PAD_T, PAD_B = 58, 14, 22, 30
PALETTE = ("#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563")


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("vetting_reports", "templates"),
        autoescape=True,  # every template is HTML, whatever its file suffix
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=fmt_num, qty=fmt_qty, duration=fmt_duration, size=fmt_bytes)
    return env


def render_html(report: dict[str, Any]) -> str:
    """Render a report document from :func:`vetting_reports.build_report`."""
    charts = [chart_geometry(c) for c in report.get("charts", [])]
    return environment().get_template("report.html.j2").render(r=report, charts=charts)


# --- formatting ---------------------------------------------------------------------


def fmt_num(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if not math.isfinite(v):
        return str(v)
    a = abs(v)
    if a >= 1e6:  # 23.7 G reads better than 2.370e+10 (byte counts, Hz)
        for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
            if a >= factor:
                return f"{v / factor:.3g}\u2009{prefix}"
    if a != 0 and a < 1e-3:
        return f"{v:.3e}"
    if float(v).is_integer():
        return f"{int(v):,}".replace(",", "\u202f")
    if a >= 100:
        return f"{v:.1f}"
    return f"{v:.3f}".rstrip("0").rstrip(".")


def fmt_qty(v: Any, unit: str = "") -> str:
    """A number with its unit: ``81.97 °C``, ``23.7 GB`` (the SI prefix joins the unit)."""
    text = fmt_num(v)
    if not unit or text == "—":
        return text
    if text[-1:].isalpha() and "\u2009" in text:
        return text + unit
    return f"{text} {unit}"


def fmt_duration(s: Any) -> str:
    if s is None:
        return "—"
    s = float(s)
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m {sec:02d}s" if h else f"{m}m {sec:02d}s"


def fmt_bytes(n: Any) -> str:
    if not isinstance(n, (int, float)) or n <= 0:
        return "—"
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return str(n)


def _elapsed(t: float, scale: str) -> str:
    """``h:mm`` on charts spanning an hour or more, ``m:ss`` from two minutes, else seconds."""
    if scale == "s":
        return f"{t:.1f}" if t < 10 else f"{t:.0f}"
    t = int(round(t))
    if scale == "h:mm":
        h, m = divmod(abs(t) // 60, 60)
        return f"{h}:{m:02d}"
    m, s = divmod(abs(t), 60)
    return f"{m}:{s:02d}"


def _segments(points: list[list[float]]) -> list[list[list[float]]]:
    """Split a line where the data has a gap (another stage ran, the agent was away),
    so that the chart does not draw a straight line through time without samples."""
    if len(points) < 3:
        return [points]
    gaps = sorted(b[0] - a[0] for a, b in zip(points, points[1:]))
    typical = gaps[len(gaps) // 2]
    limit = max(typical * 4, (points[-1][0] - points[0][0]) * 0.01)
    out, cur = [], [points[0]]
    for a, b in zip(points, points[1:]):
        if b[0] - a[0] > limit:
            out.append(cur)
            cur = []
        cur.append(b)
    out.append(cur)
    return out


def _nice_step(span: float, ticks: int = 4) -> float:
    raw = span / max(ticks, 1)
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    for f in (1, 2, 2.5, 5, 10):
        if raw <= f * mag:
            return f * mag
    return 10 * mag


# --- chart geometry -----------------------------------------------------------------


def chart_geometry(chart: dict[str, Any]) -> dict[str, Any]:
    """Scale one chart document into SVG coordinates (strings of numbers only)."""
    lines = chart.get("lines") or []
    pts = [p for line in lines for p in line["points"]]
    geo: dict[str, Any] = {
        "id": chart["id"],
        "title": chart["title"],
        "w": W,
        "h": H,
        "lines": [],
        "limits": [],
        "stages": [],
        "xticks": [],
        "yticks": [],
        "hidden_lines": chart.get("hidden_lines", 0),
        "unit": chart.get("unit", ""),
    }
    if not pts:
        return geo
    tmin, tmax = min(p[0] for p in pts), max(p[0] for p in pts)
    if tmax <= tmin:
        tmax = tmin + 1.0
    lo, hi = min(p[2] for p in pts), max(p[3] for p in pts)
    span = (hi - lo) or max(abs(hi), 1.0)
    keys = {line["key"] for line in lines}
    limits = []
    for lim in chart.get("limits", []):
        if lim["key"] != "*" and lim["key"] not in keys:
            if not any(fnmatchcase(k, lim["key"]) for k in keys):
                continue
        v = lim["value"]
        if lo - span <= v <= hi + span:  # a limit far off the data would squash the lines
            limits.append(lim)
            lo, hi = min(lo, v), max(hi, v)
    if hi <= lo:
        lo, hi = lo - 1.0, hi + 1.0
    pad = (hi - lo) * 0.06
    lo, hi = lo - pad, hi + pad
    x0, x1, y0, y1 = PAD_L, W - PAD_R, H - PAD_B, PAD_T

    def sx(t: float) -> float:
        return round(x0 + (t - tmin) / (tmax - tmin) * (x1 - x0), 1)

    def sy(v: float) -> float:
        return round(y0 - (v - lo) / (hi - lo) * (y0 - y1), 1)

    for i, line in enumerate(lines):
        paths, bands = [], []
        for p in _segments(line["points"]):
            paths.append(" ".join(f"{sx(t)},{sy(mean)}" for t, mean, _mn, _mx in p))
            bands.append(
                " ".join(f"{sx(t)},{sy(mx)}" for t, _m, _mn, mx in p)
                + " "
                + " ".join(f"{sx(t)},{sy(mn)}" for t, _m, mn, _mx in reversed(p))
            )
        geo["lines"].append(
            {
                "key": line["key"],
                "color": PALETTE[i % len(PALETTE)],
                "paths": paths,
                "bands": bands,
                "peak": line.get("peak"),
                "count": line.get("count"),
            }
        )
    for lim in limits:
        geo["limits"].append(
            {"y": sy(lim["value"]), "label": lim["label"], "severity": lim.get("severity", "critical")}
        )
    for i, st in enumerate(chart.get("stages") or []):
        if st.get("start_s") is None:
            continue
        a = max(tmin, st["start_s"])
        b = min(tmax, st["end_s"] if st.get("end_s") is not None else tmax)
        if b <= a:
            continue
        xa, xb = sx(a), sx(b)
        geo["stages"].append(
            {
                "x": xa,
                "w": round(xb - xa, 1),
                "name": st["name"],
                "verdict": st.get("verdict"),
                "shade": i % 2 == 0,
                "label": (xb - xa) > 8 * len(st["name"]) * 0.75,
            }
        )
    step = _nice_step(hi - lo)
    v = math.ceil(lo / step) * step
    while v <= hi + 1e-9:
        geo["yticks"].append({"y": sy(v), "label": fmt_num(round(v, 10))})
        v += step
    scale = "h:mm" if tmax - tmin >= 3600 else "m:ss" if tmax - tmin >= 120 else "s"
    for k in range(6):
        t = tmin + (tmax - tmin) * k / 5
        anchor = "start" if k == 0 else "end" if k == 5 else "middle"
        geo["xticks"].append({"x": sx(t), "label": _elapsed(t, scale), "anchor": anchor})
    geo.update(x0=x0, x1=x1, y0=y0, y1=y1, xunit=scale)
    return geo
