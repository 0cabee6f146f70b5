"""``build_report``: the JSON report of one run (schema in ``docs/report-schema.md``).

The report is plain JSON data (strings, numbers, lists, dicts; timestamps as RFC 3339
strings), so ``json.loads(json.dumps(report)) == report`` and the HTML renderer, the
API and plugin sections all read the same document. Bump ``SCHEMA_VERSION`` on any
incompatible change and describe it in the schema document.
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Any

import msgspec
import structlog

import vetting_core
from vetting_core.model import RunRecord, Severity, ThresholdRule, Verdict
from vetting_core.records import ReportSection

from . import series as series_mod
from .timefmt import iso, seconds_between, utc

log = structlog.get_logger()

SCHEMA = "vetting-report"
SCHEMA_VERSION = 1
MAX_EVENTS = 2000

OP_SYMBOL = {
    "lt": "<",
    "lte": "≤",
    "gt": ">",
    "gte": "≥",
    "eq": "=",
    "ne": "≠",
    "regex": "~",
    "delta_lte": "Δ ≤",
    "within_pct": "±%",
}
UPPER = {"lt", "lte", "delta_lte"}
LOWER = {"gt", "gte"}

_RESULT_VERDICT = {
    "passed": "passed",
    "pass": "passed",
    "completed": "passed",
    "success": "passed",
    "failed": "failed",
    "fail": "failed",
    "cancelled": "cancelled",
    "canceled": "cancelled",
    "incomplete": "incomplete",
}


def _val(x: Any) -> Any:
    return getattr(x, "value", x)


def run_verdict(record: RunRecord) -> str:
    """passed | failed | hold | cancelled | incomplete — what the operator needs to know.

    ``incomplete``: nothing failed, but the run did not test everything (a stage could
    not run here, or the run has not finished)."""
    result = (record.run.result or "").lower()
    if result in _RESULT_VERDICT:
        return _RESULT_VERDICT[result]
    verdicts = {_val(s.state) for s in record.stages}
    state = record.run.state
    if state == "Cancelled":
        return "cancelled"
    if "failed" in verdicts or state in ("Failed", "FailedHolding", "Released"):
        return "hold" if state == "FailedHolding" and "failed" not in verdicts else "failed"
    if "hold" in verdicts:
        return "hold"
    if "cannot_run" in verdicts:
        return "incomplete"
    if state in ("Completed", "Reporting") and all(Verdict(v).terminal for v in verdicts):
        return "passed"
    return "incomplete"


def rule_doc(rule: ThresholdRule) -> dict[str, Any]:
    doc = msgspec.to_builtins(rule)
    doc["description"] = describe_rule(rule)
    return doc


def describe_rule(rule: ThresholdRule) -> str:
    unit = f" {rule.unit}" if rule.unit else ""
    what = f"{rule.kind} {rule.key}" if rule.key != "*" else rule.kind
    if rule.op == "within_pct":
        return f"{what} within {rule.threshold:g}% of {rule.nominal:g}{unit}"
    sym = OP_SYMBOL.get(rule.op, rule.op)
    thr = f"{rule.threshold:g}" if isinstance(rule.threshold, (int, float)) else repr(rule.threshold)
    return f"{what} {sym} {thr}{unit}"


def rules_for(rules: list[ThresholdRule], stage: str, kind: str, key: str) -> list[ThresholdRule]:
    return [r for r in rules if r.kind == kind and fnmatchcase(stage, r.stage) and fnmatchcase(key, r.key)]


def _worst(op: str, observed: list[Any], nominal: float) -> Any:
    nums = [o for o in observed if isinstance(o, (int, float)) and o == o]
    if not nums:
        return observed[0] if observed else None
    if op in UPPER:
        return max(nums)
    if op in LOWER:
        return min(nums)
    if op == "within_pct":
        return max(nums, key=lambda v: abs(v - nominal))
    return nums[0]


def _breaches(record: RunRecord) -> list[dict[str, Any]]:
    by_id = {r.id: r for r in record.thresholds if r.id is not None}
    groups: dict[tuple, dict[str, Any]] = {}
    for ev in record.evaluations:
        if ev.passed:
            continue
        gk = (ev.rule_id, ev.stage, ev.kind, ev.key)
        g = groups.get(gk)
        if g is None:
            g = groups[gk] = {"ev": ev, "observed": [], "first": ev.ts, "last": ev.ts}
        g["observed"].append(ev.observed)
        if ev.ts < g["first"]:
            g["first"] = ev.ts
        if ev.ts > g["last"]:
            g["last"] = ev.ts
    out = []
    for (rule_id, stage, kind, key), g in groups.items():
        rule = by_id.get(rule_id)
        if rule is None:
            candidates = rules_for(record.thresholds, stage, kind, key)
            rule = candidates[0] if len(candidates) == 1 else None
        ev = g["ev"]
        severity = _val(rule.severity) if rule else _val(ev.severity)
        out.append(
            {
                "rule_id": rule_id,
                "rule": rule_doc(rule) if rule else None,
                "description": describe_rule(rule) if rule else f"{kind} {key}",
                "stage": stage,
                "kind": kind,
                "key": key,
                "severity": severity,
                "count": len(g["observed"]),
                "worst": _worst(rule.op if rule else "", g["observed"], rule.nominal if rule else 0.0),
                "first_ts": iso(g["first"]),
                "last_ts": iso(g["last"]),
            }
        )
    sev_rank = {"critical": 0, "warning": 1, "info": 2}
    out.sort(key=lambda b: (sev_rank.get(b["severity"], 3), b["first_ts"] or "", b["stage"], b["key"]))
    return out


def _inventory_summary(inv: Mapping[str, Any]) -> dict[str, Any]:
    """A few human lines from the inventory document; tolerant of missing or odd data."""

    def sec(name: str) -> dict[str, Any]:
        v = inv.get(name)
        return v if isinstance(v, dict) else {}

    def lst(name: str) -> list[Any]:
        v = inv.get(name)
        return [x for x in v if isinstance(x, dict)] if isinstance(v, list) else []

    system, cpu, mem, bmc = sec("system"), sec("cpu"), sec("memory"), sec("bmc")
    out: dict[str, Any] = {
        "system": " ".join(str(system.get(k) or "") for k in ("vendor", "product")).strip() or None,
        "serial": system.get("serial") or None,
        "bios": " ".join(
            str(system.get(k) or "") for k in ("bios_vendor", "bios_version", "bios_date")
        ).strip()
        or None,
        "bmc": " ".join(str(bmc.get(k) or "") for k in ("manufacturer", "firmware")).strip() or None,
        "cpu": None,
        "memory_gib": mem.get("total_gib"),
        "dimms": len(mem.get("dimms") or []) if isinstance(mem.get("dimms"), list) else 0,
        "disks": [
            {k: d.get(k) for k in ("name", "model", "serial", "size_bytes", "transport", "firmware")}
            for d in lst("disks")
        ],
        "nics": [
            {
                k: n.get(k)
                for k in ("name", "mac", "driver", "speed_mbps", "max_speed_mbps", "link", "firmware")
            }
            for n in lst("nics")
            if not n.get("virtual")
        ],
        "gpus": [
            {k: g.get(k) for k in ("index", "name", "serial", "vbios", "memory_mib")} for g in lst("gpus")
        ],
        "unavailable": sec("unavailable"),
    }
    if cpu:
        model = cpu.get("model") or "?"
        sockets, cores, threads = (cpu.get(k) or "?" for k in ("sockets", "cores", "threads"))
        out["cpu"] = f"{sockets} × {model}, {cores} cores / {threads} threads"
    return out


def _stage_docs(
    record: RunRecord, counts: dict[str, int], breach_counts: dict[str, int]
) -> list[dict[str, Any]]:
    subs: dict[str, list[dict[str, Any]]] = {}
    for s in sorted(record.substeps, key=lambda s: (s.stage_name, s.ordinal)):
        subs.setdefault(s.stage_name, []).append(
            {
                "name": s.name,
                "ordinal": s.ordinal,
                "verdict": _val(s.state),
                "reason": s.reason,
                "started_at": iso(s.started_at),
                "completed_at": iso(s.completed_at),
                "duration_s": seconds_between(s.started_at, s.completed_at),
                "summary": s.summary,
            }
        )
    out = []
    for st in sorted(record.stages, key=lambda s: s.ordinal):
        out.append(
            {
                "name": st.name,
                "ordinal": st.ordinal,
                "verdict": _val(st.state),
                "reason": st.reason,
                "started_at": iso(st.started_at),
                "completed_at": iso(st.completed_at),
                "duration_s": seconds_between(st.started_at, st.completed_at),
                "summary": st.summary,
                "substeps": subs.pop(st.name, []),
                "measurements": counts.get(st.name, 0),
                "breaches": breach_counts.get(st.name, 0),
            }
        )
    for name, orphans in subs.items():  # sub-steps of a stage the record does not list
        out.append(
            {
                "name": name,
                "ordinal": 10**6,
                "verdict": "pending",
                "reason": "stage row missing",
                "started_at": None,
                "completed_at": None,
                "duration_s": None,
                "summary": {},
                "substeps": orphans,
                "measurements": counts.get(name, 0),
                "breaches": breach_counts.get(name, 0),
            }
        )
    return out


def _failures(record: RunRecord, stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for st in stages:
        for sub in st["substeps"]:
            if sub["verdict"] in ("failed", "hold", "cannot_run"):
                out.append(
                    {
                        "stage": st["name"],
                        "substep": sub["name"],
                        "verdict": sub["verdict"],
                        "reason": sub["reason"],
                    }
                )
        if st["verdict"] in ("failed", "hold", "cannot_run"):
            out.append(
                {"stage": st["name"], "substep": None, "verdict": st["verdict"], "reason": st["reason"]}
            )
    if not out and record.run.state in ("Failed", "FailedHolding", "Cancelled") and record.run.reason:
        out.append(
            {
                "stage": record.run.failed_stage,
                "substep": None,
                "verdict": "failed",
                "reason": record.run.reason,
            }
        )
    return out


def chart_limits(rules: list[ThresholdRule]) -> list[dict[str, Any]]:
    out = []
    for r in rules:
        if not isinstance(r.threshold, (int, float)) or isinstance(r.threshold, bool):
            continue
        base = {"kind": r.kind, "key": r.key, "stage": r.stage, "severity": _val(r.severity)}
        if r.op in ("lt", "lte", "gt", "gte"):
            out.append({**base, "value": float(r.threshold), "label": f"{OP_SYMBOL[r.op]} {r.threshold:g}"})
        elif r.op == "within_pct":
            tol = abs(r.nominal) * float(r.threshold) / 100.0
            out.append({**base, "value": r.nominal - tol, "label": f"≥ {r.nominal - tol:g}"})
            out.append({**base, "value": r.nominal + tol, "label": f"≤ {r.nominal + tol:g}"})
    return out


def build_report(record: RunRecord, registry: Any = None) -> dict[str, Any]:
    """The JSON report document of ``record`` (see ``docs/report-schema.md``).

    ``registry`` (a :class:`vetting_core.Registry`) supplies plugin report sections;
    a section that raises or returns something unusable is reported under
    ``sections[name].error`` instead of failing the report.
    """
    run, host = record.run, record.host
    groups = series_mod.group(record.measurements)
    series_docs = [series_mod.summarise(d) for d in groups.values()]
    stage_order = {st.name: st.ordinal for st in record.stages}
    series_docs.sort(
        key=lambda s: (stage_order.get(s["stage"], 10**9), s["stage"], s["kind"], s["key"], s["unit"])
    )

    counts: dict[str, int] = {}
    for s in series_docs:
        counts[s["stage"]] = counts.get(s["stage"], 0) + s["count"]
    breaches = _breaches(record)
    breach_counts: dict[str, int] = {}
    for b in breaches:
        breach_counts[b["stage"]] = breach_counts.get(b["stage"], 0) + b["count"]
    stages = _stage_docs(record, counts, breach_counts)
    failures = _failures(record, stages)
    verdict = run_verdict(record)

    starts = [t for t in (run.started_at, *(s.started_at for s in record.stages)) if t is not None]
    all_ts = [d.ts[0] for d in groups.values() if d.ts]
    t0 = min([utc(t) for t in starts + all_ts], default=datetime.now(UTC))
    stage_spans = [
        {
            "name": st.name,
            "verdict": _val(st.state),
            "start_s": seconds_between(t0, st.started_at),
            "end_s": seconds_between(t0, st.completed_at),
        }
        for st in sorted(record.stages, key=lambda s: s.ordinal)
        if st.started_at is not None
    ]

    stage_verdicts: dict[str, int] = {}
    for st in stages:
        stage_verdicts[st["verdict"]] = stage_verdicts.get(st["verdict"], 0) + 1
    diffs = [msgspec.to_builtins(d) for d in record.spec_diffs]
    events = sorted(record.events, key=lambda e: utc(e.ts))
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "generated_at": iso(datetime.now(UTC)),
        "generator": {"name": "vetting", "version": vetting_core.__version__},
        "verdict": verdict,
        "summary": {
            "verdict": verdict,
            "reason": run.reason,
            "failed_stage": run.failed_stage,
            "failures": failures,
            "stages": stage_verdicts,
            "critical_breaches": sum(1 for b in breaches if b["severity"] == "critical"),
            "warning_breaches": sum(1 for b in breaches if b["severity"] == "warning"),
            "critical_spec_diffs": sum(
                1 for d in record.spec_diffs if _val(d.severity) == Severity.critical.value and not d.ignored
            ),
            "measurements": len(record.measurements),
            "series": len(series_docs),
        },
        "host": {
            # boot_config is left out on purpose: it may hold BMC credentials
            "id": host.id,
            "name": host.name,
            "mac": host.mac,
            "boot_provider": host.boot_provider,
            "notes": host.notes,
        },
        "run": {
            "id": run.id,
            "state": run.state,
            "result": run.result,
            "profile": run.profile,
            "non_destructive": run.non_destructive,
            "override_flags": run.override_flags,
            "failed_stage": run.failed_stage,
            "reason": run.reason,
            "current_stage": run.current_stage,
            "hold_ip": run.hold_ip,
            "started_at": iso(run.started_at),
            "completed_at": iso(run.completed_at),
            "duration_s": seconds_between(run.started_at, run.completed_at),
        },
        "inventory": record.inventory,
        "inventory_summary": _inventory_summary(record.inventory or {}),
        "spec_diffs": diffs,
        "stages": stages,
        "series": series_docs,
        "thresholds": [rule_doc(r) for r in record.thresholds],
        "breaches": breaches,
        "firmware": [msgspec.to_builtins(f) for f in record.firmware],
        "artifacts": [msgspec.to_builtins(a) for a in record.artifacts],
        "timings": {
            "run_s": seconds_between(run.started_at, run.completed_at),
            "t0": iso(t0),
            "stages": [{"name": s["name"], "duration_s": s["duration_s"]} for s in stages],
        },
        "charts": series_mod.charts(
            groups,
            t0,
            stage_spans,
            chart_limits(record.thresholds),
            peaks={(s["stage"], s["kind"], s["key"], s["unit"]): s["max"] for s in series_docs},
        ),
        "events": [
            {"ts": iso(e.ts), "kind": e.kind, "level": e.level, "message": e.message, "actor": e.actor}
            for e in events[-MAX_EVENTS:]
        ],
        "events_truncated": max(0, len(events) - MAX_EVENTS),
        "sections": {},
    }
    # normalise to plain JSON (e.g. Struct-valued summaries, datetimes inside dicts)
    report = msgspec.json.decode(msgspec.json.encode(report))
    if registry is not None:
        report["sections"] = render_sections(report, registry)
    return report


def render_sections(report: dict[str, Any], registry: Any) -> dict[str, Any]:
    specs = sorted(getattr(registry, "report_sections", {}).values(), key=lambda s: (s.order, s.name))
    out: dict[str, Any] = {}
    for spec in specs:
        # each plugin reads its own copy: one cannot alter what the next one (or the report) sees
        snapshot = msgspec.json.decode(msgspec.json.encode(report))
        try:
            section = spec.render(snapshot)
            if section is None:
                continue
            if not isinstance(section, ReportSection):
                raise TypeError(f"render() returned {type(section).__name__}, expected ReportSection or None")
            data = msgspec.json.decode(msgspec.json.encode(section.data))
            out[spec.name] = {
                "title": str(section.title),
                "order": spec.order,
                "html": str(section.html or ""),
                "data": data,
                "error": None,
            }
        except Exception as exc:
            log.error("report.section_failed", section=spec.name, error=f"{type(exc).__name__}: {exc}")
            out[spec.name] = {
                "title": spec.name,
                "order": spec.order,
                "html": "",
                "data": None,
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=5),
            }
    return out
