"""Reporting: assemble a :class:`~vetting_core.model.RunRecord` from the database and
write the reports with :func:`vetting_reports.write_reports` (JSON, HTML, OCPTV).

Runs in the background after ``pipeline_done`` (the agent's ``/result`` is not held
up); the watchdog restarts it for a run a crash left in ``Reporting``. A run that
fails gets its report too, written when it enters ``Failed`` (the state is left
alone; a later override that completes the run rewrites it). The report files are
stored under ``data_dir/reports/run-<id>/`` and recorded as artifacts;
``runs.report_path`` points at the JSON report.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import msgspec
import structlog

from vetting_core.model import (
    Artifact,
    Event,
    FirmwareSnapshot,
    Host,
    Measurement,
    Run,
    RunRecord,
    Severity,
    SpecDiff,
    Stage,
    SubStep,
    ThresholdEvaluation,
    Verdict,
    completed_result,
)
from vetting_core.statemachine import FAILED, RunEventType, RunState

from ..db.database import as_dt, utcnow
from ..runtime import Runtime, rule_from_row

log = structlog.get_logger()


def _j(v: str | None, default: Any) -> Any:
    return default if v is None else msgspec.json.decode(v)


async def build_record(rt: Runtime, run_id: int, *, measurements: bool = True) -> RunRecord:
    db = rt.db
    r = await db.fetchrow("SELECT * FROM runs WHERE id = $1", run_id)
    h = await rt.hosts.find(host_id=int(r["host_id"]))
    stages = await db.fetch("SELECT * FROM stages WHERE run_id = $1 ORDER BY ordinal", run_id)
    stage_names = {int(s["id"]): s["name"] for s in stages}
    subs = await db.fetch("SELECT * FROM sub_steps WHERE run_id = $1 ORDER BY stage_name, ordinal", run_id)
    rules = [rule_from_row(x) for x in await db.fetch("SELECT * FROM thresholds WHERE run_id = $1 ORDER BY ordinal", run_id)]
    evals = await db.fetch("SELECT * FROM threshold_evaluations WHERE run_id = $1 ORDER BY id", run_id)
    diffs = await db.fetch("SELECT * FROM spec_diffs WHERE run_id = $1 ORDER BY id", run_id)
    fw = await db.fetch("SELECT * FROM firmware_snapshots WHERE run_id = $1 ORDER BY id", run_id)
    arts = await db.fetch("SELECT * FROM artifacts WHERE run_id = $1 ORDER BY id", run_id)
    events = await db.fetch("SELECT * FROM events WHERE run_id = $1 ORDER BY id", run_id)
    samples: list[Measurement] = []
    if measurements:
        rows = await db.fetch(
            "SELECT stage_id, ts, kind, key, value, unit, text FROM measurements WHERE run_id = $1 ORDER BY ts, id", run_id
        )
        samples = [
            Measurement(ts=as_dt(m["ts"]), stage=stage_names.get(m["stage_id"], ""), kind=m["kind"], key=m["key"],
                        value=m["value"], unit=m["unit"] or "", text=m["text"])
            for m in rows
        ]
    return RunRecord(
        host=Host(
            id=int(h["id"]), name=h["name"], mac=h["mac"], boot_provider=h["boot_provider"],
            boot_config=_j(h["boot_config_json"], {}), expected_spec_yaml=h["expected_spec_yaml"], notes=h["notes"],
            created_at=as_dt(h["created_at"]), updated_at=as_dt(h["updated_at"]), last_seen_at=as_dt(h["last_seen_at"]),
        ),
        run=Run(
            id=run_id, host_id=int(r["host_id"]), state=r["state"], result=r["result"], failed_stage=r["failed_stage"],
            reason=r["reason"], current_stage=r["current_stage"], profile=r["profile"],
            non_destructive=bool(r["non_destructive"]), override_flags=_j(r["override_flags_json"], {}),
            hold_ip=r["hold_ip"], started_at=as_dt(r["started_at"]), completed_at=as_dt(r["completed_at"]),
            report_path=r["report_path"], origin=r["origin"],
        ),
        stages=[
            Stage(id=int(s["id"]), run_id=run_id, name=s["name"], ordinal=int(s["ordinal"]), state=Verdict(s["state"]),
                  reason=s["reason"], started_at=as_dt(s["started_at"]), completed_at=as_dt(s["completed_at"]),
                  summary=_j(s["summary_json"], {}))
            for s in stages
        ],
        substeps=[
            SubStep(stage_name=s["stage_name"], ordinal=int(s["ordinal"]), name=s["name"], state=Verdict(s["state"]),
                    reason=s["reason"], started_at=as_dt(s["started_at"]), completed_at=as_dt(s["completed_at"]),
                    summary=_j(s["summary_json"], {}))
            for s in subs
        ],
        measurements=samples,
        thresholds=rules,
        evaluations=[
            ThresholdEvaluation(
                rule_id=int(e["threshold_id"]), stage=e["stage_name"], kind=e["kind"], key=e["key"], ts=as_dt(e["ts"]),
                observed=e["observed"] if e["observed"] is not None else e["observed_text"], passed=bool(e["passed"]),
                severity=Severity(e["severity"]),
            )
            for e in evals
        ],
        spec_diffs=[
            SpecDiff(field=d["field"], expected=d["expected"], actual=d["actual"], severity=Severity(d["severity"]),
                     message=d["message"], ignored=bool(d["ignored"]))
            for d in diffs
        ],
        firmware=[
            FirmwareSnapshot(component=f["component"], identifier=f["identifier"], version=f["version"],
                             vendor=f["vendor"], raw=_j(f["raw_json"], {}))
            for f in fw
        ],
        artifacts=[
            Artifact(kind=a["kind"], path=a["path"], sha256=a["sha256"], size_bytes=int(a["size_bytes"]),
                     stage=stage_names.get(a["stage_id"]))
            for a in arts
        ],
        inventory=_j(r["inventory_json"], {}),
        events=[
            Event(ts=as_dt(e["ts"]), kind=e["kind"], level=e["level"], message=e["message"], run_id=run_id,
                  host_id=e["host_id"], actor=e["actor"], data=_j(e["data_json"], {}) or {})
            for e in events
        ],
    )


class Reporting:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.active: set[int] = set()
        self.failed: dict[int, float] = {}

    def out_dir(self, run_id: int) -> Path:
        return self.rt.data_dir / "reports" / f"run-{run_id}"

    async def build(self, run_id: int) -> None:
        if run_id in self.active:
            return
        if time.monotonic() - self.failed.get(run_id, -1e9) < 60:
            return  # failed less than a minute ago: the watchdog retries later
        self.active.add(run_id)
        try:
            await self._build(run_id)
        except Exception as exc:
            self.failed[run_id] = time.monotonic()
            log.exception("report.failed", run_id=run_id, error=f"{type(exc).__name__}: {exc}")
            async with self.rt.unit() as u:
                await u.event("report_failed", f"writing the report failed (retried in a minute): {type(exc).__name__}: {exc}",
                              run_id=run_id, level="error")
        finally:
            self.active.discard(run_id)

    async def _build(self, run_id: int) -> None:
        rt = self.rt
        state = await rt.db.fetchval("SELECT state FROM runs WHERE id = $1", run_id)
        if state not in FAILED | {RunState.Reporting}:
            return
        record = await build_record(rt, run_id)
        finished = utcnow()
        done: dict[str, Any] = {}
        if state == "Reporting":  # the report is the last step: it describes the completed run
            done = completion(record.stages)
            record.run = msgspec.structs.replace(record.run, state="Completed", completed_at=finished, **done)
        out = self.out_dir(run_id)
        out.mkdir(parents=True, exist_ok=True)
        from vetting_reports import write_reports

        paths = await _in_thread(lambda: write_reports(record, rt.registry, out))
        now = utcnow()
        async with rt.unit() as u:
            await u.tx.execute("DELETE FROM artifacts WHERE run_id = $1 AND location = 'server' AND kind LIKE 'report%'", run_id)
            for fmt, path in paths.items():
                path = Path(path)
                data = path.read_bytes()
                await u.tx.execute(
                    "INSERT INTO artifacts (run_id, stage_id, kind, path, sha256, size_bytes, location, created_at) "
                    "VALUES ($1, NULL, $2, $3, $4, $5, 'server', $6)",
                    run_id, "report" if fmt == "json" else f"report_{fmt}", str(path.resolve()),
                    hashlib.sha256(data).hexdigest(), len(data), now,
                )
            report_path = str(Path(paths.get("json") or next(iter(paths.values()))).resolve())
            run = await u.tx.fetchrow("SELECT * FROM runs WHERE id = $1", run_id)
            if run["state"] == "Reporting":
                await rt.service.transition(
                    u, run, RunEventType.report_done, report_path=report_path, completed_at=finished,
                    message="report written: run completed" + (f", {done['result']}: {done['reason']}" if done.get("reason") else ""),
                    **done,
                )
            else:
                await u.tx.execute("UPDATE runs SET report_path = $2 WHERE id = $1", run_id, report_path)
                await u.event("report_written", f"report of the failed run written: {report_path}", run_id=run_id)


def completion(stages: list[Stage]) -> dict[str, Any]:
    """``result`` (and ``reason``) of a run whose pipeline ended: ``pass``, or
    ``incomplete`` with the stages that could not run (host mode goes on past them)."""
    result = completed_result(s.state for s in stages)
    if result == "pass":
        return {"result": result}
    not_run = [f"{s.name}: {s.reason}" for s in stages if s.state is Verdict.cannot_run]
    return {"result": result, "reason": f"{len(not_run)} stage(s) could not run here: " + "; ".join(not_run)}


async def _in_thread(fn: Any) -> Any:
    import anyio.to_thread

    return await anyio.to_thread.run_sync(fn)
