"""Database rows → operator API Structs (:mod:`.schemas`)."""

from __future__ import annotations

import math
from typing import Any

import msgspec

from ..db.database import Database, as_dt
from ..runs import listing
from ..schemas import (
    ArtifactOut,
    BreachOut,
    EventOut,
    FirmwareOut,
    HostOut,
    RunDetail,
    RunOut,
    SeriesOut,
    SeriesPoint,
    SpecDiffOut,
    StageOut,
    SubStepOut,
    TallyOut,
    ThresholdOut,
)


def _j(v: str | None, default: Any = None) -> Any:
    return default if v is None else msgspec.json.decode(v)


def host_out(r: dict[str, Any], agent_token: str | None = None) -> HostOut:
    return HostOut(
        id=int(r["id"]), name=r["name"], mac=r["mac"], boot_provider=r["boot_provider"],
        boot_config=_j(r["boot_config_json"], {}), expected_spec_yaml=r["expected_spec_yaml"], notes=r["notes"],
        created_at=as_dt(r["created_at"]), updated_at=as_dt(r["updated_at"]), last_seen_at=as_dt(r["last_seen_at"]),
        last_seen_ip=r["last_seen_ip"], agent_version=r["agent_version"], agent_token=agent_token,
    )


def run_out(r: dict[str, Any]) -> RunOut:
    return RunOut(
        id=int(r["id"]), host_id=int(r["host_id"]), host_name=r.get("host_name") or "", state=r["state"],
        result=r["result"], profile=r["profile"], non_destructive=bool(r["non_destructive"]),
        current_stage=r["current_stage"], failed_stage=r["failed_stage"], reason=r["reason"],
        started_at=as_dt(r["started_at"]), state_changed_at=as_dt(r["state_changed_at"]),
        completed_at=as_dt(r["completed_at"]), last_heartbeat_at=as_dt(r["last_heartbeat_at"]), hold_ip=r["hold_ip"],
        report_path=r["report_path"], boot_message=r["boot_message"], actor=r["actor"], origin=r.get("origin"),
    )


def event_out(r: dict[str, Any]) -> EventOut:
    return EventOut(
        id=int(r["id"]), ts=as_dt(r["ts"]), kind=r["kind"], level=r["level"], message=r["message"],
        run_id=r["run_id"], host_id=r["host_id"], actor=r["actor"], data=_j(r["data_json"]),
    )


def downsample(rows: list[dict[str, Any]], points: int) -> list[SeriesPoint]:
    """Equal-count buckets: min/avg/max of each, stamped with the bucket's first ts."""
    if not rows:
        return []
    size = max(1, math.ceil(len(rows) / max(1, points)))
    out = []
    for i in range(0, len(rows), size):
        chunk = rows[i : i + size]
        vals = [float(c["value"]) for c in chunk if c["value"] is not None and c["value"] == c["value"]]
        out.append(SeriesPoint(
            as_dt(chunk[0]["ts"]), min(vals) if vals else None, sum(vals) / len(vals) if vals else None,
            max(vals) if vals else None, len(chunk),
        ))
    return out


async def series(db: Database, run_id: int, *, kind: str | None = None, key: str | None = None,
                 points: int = 60, max_series: int = 50) -> list[SeriesOut]:
    where, args = "run_id = $1", [run_id]
    if kind:
        args.append(kind)
        where += f" AND kind = ${len(args)}"
    if key:
        args.append(key)
        where += f" AND key = ${len(args)}"
    groups = await db.fetch(
        f"SELECT stage_id, kind, key, max(unit) AS unit, count(*) AS n FROM measurements WHERE {where} "
        f"GROUP BY stage_id, kind, key ORDER BY kind, key, stage_id LIMIT {int(max_series)}",
        *args,
    )
    names = {int(s["id"]): s["name"] for s in await db.fetch("SELECT id, name FROM stages WHERE run_id = $1", run_id)}
    out = []
    for g in groups:
        if g["stage_id"] is None:
            rows = await db.fetch(
                "SELECT ts, value FROM measurements WHERE run_id = $1 AND stage_id IS NULL AND kind = $2 AND key = $3 ORDER BY ts",
                run_id, g["kind"], g["key"],
            )
        else:
            rows = await db.fetch(
                "SELECT ts, value FROM measurements WHERE run_id = $1 AND stage_id = $2 AND kind = $3 AND key = $4 ORDER BY ts",
                run_id, int(g["stage_id"]), g["kind"], g["key"],
            )
        out.append(SeriesOut(
            stage=names.get(g["stage_id"]) if g["stage_id"] is not None else None, kind=g["kind"], key=g["key"],
            unit=g["unit"] or "", count=int(g["n"]), points=downsample(rows, points),
        ))
    return out


async def run_detail(db: Database, run_id: int, *, points: int = 60) -> RunDetail | None:
    r = await listing.run_row(db, run_id)
    if r is None:
        return None
    stages = await listing.stages(db, run_id)
    stage_names = {int(s["id"]): s["name"] for s in stages}
    subs = await db.fetch("SELECT * FROM sub_steps WHERE run_id = $1 ORDER BY stage_name, ordinal", run_id)
    diffs = await db.fetch("SELECT * FROM spec_diffs WHERE run_id = $1 ORDER BY id", run_id)
    ths = await db.fetch("SELECT * FROM thresholds WHERE run_id = $1 ORDER BY ordinal", run_id)
    tallies = await db.fetch("SELECT * FROM threshold_tallies WHERE run_id = $1 ORDER BY threshold_id, stage_name, key", run_id)
    breaches = await db.fetch(
        "SELECT * FROM threshold_evaluations WHERE run_id = $1 AND passed = $2 ORDER BY id LIMIT 200", run_id, False
    )
    n_breach = await db.fetchval("SELECT count(*) FROM threshold_evaluations WHERE run_id = $1 AND passed = $2", run_id, False)
    fw = await db.fetch("SELECT * FROM firmware_snapshots WHERE run_id = $1 ORDER BY id", run_id)
    arts = await db.fetch("SELECT * FROM artifacts WHERE run_id = $1 ORDER BY id", run_id)
    n_meas = await db.fetchval("SELECT count(*) FROM measurements WHERE run_id = $1", run_id)
    n_log = await db.fetchval("SELECT count(*) FROM log_lines WHERE run_id = $1", run_id)
    return RunDetail(
        run=run_out(r),
        stages=[
            StageOut(name=s["name"], ordinal=int(s["ordinal"]), state=s["state"], runs_on=s["runs_on"],
                     destructive=bool(s["destructive"]), timeout_s=float(s["timeout_s"]), attempt=int(s["attempt"]),
                     reason=s["reason"], started_at=as_dt(s["started_at"]), completed_at=as_dt(s["completed_at"]),
                     summary=_j(s["summary_json"], {}))
            for s in stages
        ],
        substeps=[
            SubStepOut(stage_name=s["stage_name"], ordinal=int(s["ordinal"]), name=s["name"], state=s["state"],
                       reason=s["reason"], started_at=as_dt(s["started_at"]), completed_at=as_dt(s["completed_at"]),
                       summary=_j(s["summary_json"], {}))
            for s in subs
        ],
        spec_diffs=[
            SpecDiffOut(field=d["field"], expected=d["expected"], actual=d["actual"], severity=d["severity"],
                        message=d["message"], stage=d["stage_name"], ignored=bool(d["ignored"]))
            for d in diffs
        ],
        thresholds=[
            ThresholdOut(id=int(t["id"]), stage=t["stage_name"], kind=t["kind"], key=t["key"], op=t["op"],
                         threshold=t["threshold_text"] if t["threshold_text"] is not None else t["threshold"],
                         nominal=float(t["nominal"] or 0), unit=t["unit"], severity=t["severity"], source=t["source"])
            for t in ths
        ],
        tallies=[
            TallyOut(threshold_id=int(t["threshold_id"]), stage=t["stage_name"], key=t["key"], passed=int(t["passed_count"]),
                     breaches=int(t["breach_count"]), min_observed=t["min_observed"], max_observed=t["max_observed"],
                     first_ts=as_dt(t["first_ts"]), last_ts=as_dt(t["last_ts"]))
            for t in tallies
        ],
        breaches=[
            BreachOut(threshold_id=int(b["threshold_id"]), stage=b["stage_name"], kind=b["kind"], key=b["key"],
                      ts=as_dt(b["ts"]), observed=b["observed"] if b["observed"] is not None else b["observed_text"],
                      severity=b["severity"])
            for b in breaches
        ],
        breach_count=int(n_breach or 0),
        firmware=[FirmwareOut(component=f["component"], identifier=f["identifier"], version=f["version"], vendor=f["vendor"]) for f in fw],
        artifacts=[
            ArtifactOut(id=int(a["id"]), kind=a["kind"], path=a["path"], sha256=a["sha256"], size_bytes=int(a["size_bytes"]),
                        location=a["location"], stage=stage_names.get(a["stage_id"]))
            for a in arts
        ],
        measurement_count=int(n_meas or 0),
        log_line_count=int(n_log or 0),
        series=await series(db, run_id, points=points),
        inventory=_j(r["inventory_json"]),
        override_flags=_j(r["override_flags_json"], {}),
    )
