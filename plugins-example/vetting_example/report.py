"""The ``memtester`` report section: what was tested, per memtester process.

``render(report)`` gets the JSON report document; it looks up the ``Memtester``
stage and returns ``None`` when the run did not include it. The HTML is inserted
as-is into the report, so every value is escaped here.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any

from vetting_core import ReportSection

STAGE = "Memtester"


def _stage(report: Mapping[str, Any]) -> Mapping[str, Any] | None:
    stages = report.get("stages") or []
    if isinstance(stages, Mapping):  # {name: stage}
        found = stages.get(STAGE)
        return found if isinstance(found, Mapping) else None
    for stage in stages:
        if isinstance(stage, Mapping) and stage.get("name") == STAGE:
            return stage
    return None


def _state(obj: Mapping[str, Any]) -> str:
    return str(obj.get("verdict") or obj.get("state") or "unknown")


def _substeps(stage: Mapping[str, Any], report: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    subs = stage.get("substeps")
    if subs is None:
        subs = [s for s in report.get("substeps") or [] if s.get("stage_name") == STAGE]
    return [s for s in subs if isinstance(s, Mapping)]


def render(report: Mapping[str, Any]) -> ReportSection | None:
    stage = _stage(report)
    if stage is None:
        return None
    summary = stage.get("summary") or {}
    plan = summary.get("plan") or {}
    rows = []
    data_workers = []
    for sub in _substeps(stage, report):
        s = sub.get("summary") or {}
        tested = s.get("tested_bytes")
        cov = s.get("coverage_pct")
        data_workers.append(
            {
                "name": sub.get("name"),
                "state": _state(sub),
                "reason": sub.get("reason"),
                "tested_mib": None if tested is None else round(tested / 1048576, 1),
                "coverage_pct": cov,
                "locked": s.get("locked"),
                "failures": s.get("failures"),
            }
        )
        rows.append(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>".format(
                escape(str(sub.get("name", ""))),
                escape(_state(sub)),
                "–" if tested is None else f"{tested / 1048576:.1f} MiB",
                "–" if cov is None else f"{float(cov):.1f} %",
                {True: "yes", False: "no"}.get(s.get("locked"), "–"),
                escape(str(s.get("failures", "–"))),
                escape(str(sub.get("reason") or "")),
            )
        )
    head = (
        f"<p>Verdict: <strong>{escape(_state(stage))}</strong>"
        + (f" — {escape(str(stage.get('reason')))}" if stage.get("reason") else "")
        + "</p>"
    )
    if plan:
        head += "<p>Planned {} MiB in {} process(es), {} loop(s); {} MiB were available{}.</p>".format(
            escape(str(plan.get("total_mib"))),
            escape(str(plan.get("workers"))),
            escape(str(plan.get("loops"))),
            escape(str(plan.get("available_mib"))),
            " (request capped for OOM safety)" if plan.get("capped") else "",
        )
    table = (
        "<table><thead><tr><th>process</th><th>result</th><th>tested</th><th>coverage</th>"
        "<th>mlocked</th><th>FAILURE lines</th><th>reason</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
        if rows
        else ""
    )
    return ReportSection(
        title="Memory test (memtester)",
        html=head + table,
        data={"verdict": _state(stage), "plan": dict(plan), "workers": data_workers},
    )
