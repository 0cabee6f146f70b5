"""Stage results: the orchestrator-run stages (SpecValidate), judging a result against
the thresholds, storing it once in one transaction, and the stored reply a retried
result gets back (see :mod:`.service` for the transaction's contents)."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

import anyio
import msgspec

from vetting_core.context import MemorySink, build_context, execute_stage
from vetting_core.model import Measurement, Verdict, stops_run
from vetting_core.protocol import Breach, LogLine, ResultReply, StageResult
from vetting_core.statemachine import RunEventType, RunState
from vetting_core.thresholds import Evaluation, EvaluationResult, ThresholdEngine, judge_stage

from .artifacts import check_agent_kinds
from ..db.database import Database, as_dt, utcnow
from ..errors import ApiError, conflict
from ..runtime import Runtime, Unit
from .retry import TransitionConflict
from .rows import SETTLED, failed_result, jdump, jload, json_bytes, run_reason

E = RunEventType


class StageResults:
    """A stage's result, judged and stored (a mixin of :class:`.service.RunService`)."""

    rt: Runtime
    db: Database
    orchestrator_logs: dict[tuple[int, str], list[LogLine]]

    async def run_orchestrator_stage(self, run: dict[str, Any], name: str, tx: Any = None) -> StageResult:
        """Execute an orchestrator-owned stage (SpecValidate) here, with the stored inventory."""
        reg = self.rt.registry
        db = tx or self.db
        if name not in reg.stages:
            return StageResult(stage=name, verdict=Verdict.failed, reason=f"stage {name!r} is not installed on the orchestrator")
        row = await db.fetchrow("SELECT inventory_json, expected_spec_json, profile, non_destructive, override_flags_json FROM runs WHERE id = $1", int(run["id"]))
        params = await db.fetchval("SELECT params_json FROM stages WHERE run_id = $1 AND name = $2", int(run["id"]), name)
        sink = MemorySink()
        workdir = Path(tempfile.mkdtemp(prefix=f"vetting-run{run['id']}-", dir=self._scratch()))
        try:
            ctx = build_context(
                name, sink=sink, workdir=workdir, params=jload(params, {}), profile=row["profile"],
                run_id=int(run["id"]), inventory=jload(row["inventory_json"], {}), spec=jload(row["expected_spec_json"]),
                non_destructive=True, override_flags=jload(row["override_flags_json"], {}),
            )
            res = await execute_stage(reg.stage(name), ctx)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        res.measurements = list(sink.samples)
        self.orchestrator_logs[(int(run["id"]), name)] = list(sink.lines)
        return res

    def _scratch(self) -> str:
        d = self.rt.data_dir / "tmp"
        d.mkdir(parents=True, exist_ok=True)
        return str(d)

    async def _store_stage_outcome(
        self, u: Unit, run: dict[str, Any], stage: dict[str, Any], res: StageResult, verdict: Verdict, reason: str | None,
        evaluation: EvaluationResult | None = None, engine: ThresholdEngine | None = None,
    ) -> None:
        run_id = int(run["id"])
        tx = u.tx
        now = utcnow()
        summary = dict(res.summary)
        began = res.started_at or as_dt(stage["started_at"])
        if began is not None and verdict.terminal:
            self.rt.metrics.stage_duration.labels(stage["name"], verdict.value).observe(
                max(0.0, ((res.completed_at or now) - began).total_seconds()))
        await tx.execute(
            "UPDATE stages SET state = $2, reason = $3, started_at = $4, completed_at = $5, summary_json = $6 WHERE id = $1",
            int(stage["id"]), verdict.value, reason, res.started_at or as_dt(stage["started_at"]) or now,
            res.completed_at or now, jdump(summary),
        )
        for sub in res.substeps:
            await tx.execute(
                "INSERT INTO sub_steps (run_id, stage_name, ordinal, name, state, reason, started_at, completed_at, summary_json) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (run_id, stage_name, ordinal) DO UPDATE SET "
                "name = excluded.name, state = excluded.state, reason = excluded.reason, started_at = excluded.started_at, "
                "completed_at = excluded.completed_at, summary_json = excluded.summary_json",
                run_id, stage["name"], int(sub.ordinal), sub.name[:500], sub.state.value, sub.reason,
                sub.started_at, sub.completed_at, jdump(sub.summary),
            )
        diffs = summary.get("spec_diffs") or []
        if isinstance(diffs, list) and diffs:
            await tx.execute("DELETE FROM spec_diffs WHERE run_id = $1 AND stage_name = $2", run_id, stage["name"])
            rows = []
            for d in diffs:
                if not isinstance(d, dict) or "field" not in d:
                    continue
                sev = str(d.get("severity", "warning"))
                rows.append((
                    run_id, stage["name"], str(d["field"])[:500],
                    None if d.get("expected") is None else str(d["expected"]),
                    None if d.get("actual") is None else str(d["actual"]),
                    sev if sev in ("critical", "warning", "info") else "warning",
                    str(d.get("message", ""))[:2000], bool(d.get("ignored", False)),
                ))
            await tx.executemany(
                "INSERT INTO spec_diffs (run_id, stage_name, field, expected, actual, severity, message, ignored) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)", rows,
            )
        if res.inventory is not None:
            await tx.execute("UPDATE runs SET inventory_json = $2 WHERE id = $1", run_id, jdump(res.inventory))
        if res.firmware:
            await tx.executemany(
                "INSERT INTO firmware_snapshots (run_id, component, identifier, version, vendor, raw_json) VALUES ($1, $2, $3, $4, $5, $6)",
                [(run_id, f.component, f.identifier, f.version, f.vendor, jdump(f.raw)) for f in res.firmware],
            )
        if res.artifacts:
            uploaded = {r["sha256"] for r in await tx.fetch(
                "SELECT sha256 FROM artifacts WHERE run_id = $1 AND stage_id = $2 AND location = 'server'",
                run_id, int(stage["id"]),
            )}
            rows = [(run_id, int(stage["id"]), a.kind, a.path, a.sha256, int(a.size_bytes), now)
                    for a in res.artifacts if a.sha256 not in uploaded]
            if rows:  # too large to upload (or an older agent): listed where they are
                await tx.executemany(
                    "INSERT INTO artifacts (run_id, stage_id, kind, path, sha256, size_bytes, location, created_at) "
                    "VALUES ($1, $2, $3, $4, $5, $6, 'agent', $7)", rows,
                )
        if res.measurements:
            eng = engine or await self.rt.engine(run_id, db=tx)
            ev = evaluation or eng.evaluate(res.measurements, per_sample=False)
            await self.rt.ingest.write_samples_tx(tx, run_id, res.measurements, ev, eng)
        lines = self.orchestrator_logs.pop((run_id, stage["name"]), None)
        if lines:
            await self.rt.ingest.write_lines_tx(tx, run_id, lines)
        await u.event(
            "stage", f"stage {stage['name']} {verdict.label}" + (f": {reason}" if reason else ""),
            run_id=run_id, host_id=int(run["host_id"]),
            level={Verdict.failed: "error", Verdict.cannot_run: "warning"}.get(verdict, "info"),
            data={"stage": stage["name"], "verdict": verdict.value, "reason": reason},
        )

    # ---------------------------------------------------------------- results
    async def result(self, run_id: int, res: StageResult) -> ResultReply:
        check_agent_kinds(res.artifacts, "artifacts")
        body_hash = hashlib.sha256(json_bytes(res)).hexdigest()
        stage = await self.db.fetchrow("SELECT * FROM stages WHERE run_id = $1 AND name = $2", run_id, res.stage)
        if stage is None:
            names = [r["name"] for r in await self.db.fetch("SELECT name FROM stages WHERE run_id = $1 ORDER BY ordinal", run_id)]
            raise conflict(f"stage {res.stage!r} is not in run {run_id}'s plan (planned: {', '.join(names)})", planned=names)
        if stage["runs_on"] == "orchestrator":
            raise conflict(f"stage {res.stage!r} is run by the orchestrator, not the agent")
        stored = await self._stored_reply(run_id, res.stage, int(stage["attempt"]), body_hash)
        if stored is not None:
            return stored
        run = await self.db.fetchrow("SELECT * FROM runs WHERE id = $1", run_id)
        if run["state"] != RunState.Running.value or run["current_stage"] != res.stage:
            # the same result may have been committed by a concurrent request since we looked
            stored = await self._stored_reply(run_id, res.stage, int(stage["attempt"]), body_hash)
            if stored is not None:
                return stored
        if run["state"] != RunState.Running.value:
            raise conflict(f"run {run_id} is {run['state']}; stage results are accepted only while it is Running")
        if run["current_stage"] != res.stage:
            raise conflict(
                f"stage {res.stage!r} is not the current stage of run {run_id} (current: {run['current_stage']})",
                current_stage=run["current_stage"],
            )
        for stream, seq in (("sensor", res.sensor_seq), ("log", res.log_seq)):
            if seq and not await self.db.fetchval(
                "SELECT count(*) FROM batches WHERE run_id = $1 AND stream = $2 AND seq = $3", run_id, stream, int(seq)
            ):
                raise ApiError(
                    503, f"{stream} batch {seq} (sent before this result) has not arrived yet; send it, then retry the result",
                    {"missing": {stream: int(seq)}}, headers={"Retry-After": "1"},
                )
        engine = await self.rt.engine(run_id)
        async with self.rt.ingest.engine_lock(run_id):
            ev = engine.evaluate(res.measurements, per_sample=False)
        critical_now = engine.critical(ev.breaches)
        breaches = [self._breach(engine, res.measurements, b) for b in ev.breaches[:100]]
        streamed = await self.db.fetch(
            "SELECT kind, key, observed, observed_text, threshold_id FROM threshold_evaluations "
            "WHERE run_id = $1 AND stage_name = $2 AND passed = $3 AND severity = 'critical' LIMIT 5",
            run_id, res.stage, False,
        )
        wants_hold = res.hold or res.verdict is Verdict.hold
        verdict, reason = judge_stage(res.verdict, res.reason, [*critical_now, *streamed],
                                      lambda _: critical_reason(engine, res.measurements, critical_now, streamed))
        if wants_hold:
            verdict = Verdict.hold
        hold_enabled = self.rt.settings.hold.enabled
        host_mode = await self._host_mode(run)
        stops = stops_run(verdict, live_image=not host_mode)
        # orchestrator-owned stages right after this one run now, outside the transaction
        inline: dict[str, StageResult] = {}
        if not stops:
            following = await self.db.fetch(
                "SELECT name, runs_on, state FROM stages WHERE run_id = $1 AND ordinal > $2 ORDER BY ordinal", run_id, int(stage["ordinal"])
            )
            if res.inventory is not None:
                # SpecValidate must see this result's inventory: store it first
                await self.db.execute("UPDATE runs SET inventory_json = $2 WHERE id = $1", run_id, jdump(res.inventory))
            for f in following:
                if f["state"] in SETTLED:
                    continue
                if f["runs_on"] != "orchestrator":
                    break
                r2 = await self.run_orchestrator_stage(run, f["name"])
                inline[f["name"]] = r2
                if stops_run(r2.verdict, live_image=not host_mode):
                    break
        try:
            async with self.rt.unit() as u:
                n = await u.tx.execute(
                    "INSERT INTO stage_results (run_id, stage_name, attempt, body_hash, reply_json, received_at) "
                    "VALUES ($1, $2, $3, $4, '', $5) ON CONFLICT DO NOTHING",
                    run_id, res.stage, int(stage["attempt"]), body_hash, utcnow(),
                )
                if n != 1:
                    raise TransitionConflict("duplicate result")
                await self._store_stage_outcome(u, run, stage, res, verdict, reason, ev, engine)
                next_stage = None
                hold = False
                failed_stage: str | None = None
                if stops:
                    run = await self.transition(
                        u, run, E.stage_failed, reason=run_reason(res.stage, verdict, reason), stage=res.stage,
                        failed_stage=res.stage, retry_stage=None, **failed_result(verdict),
                    )
                    hold = verdict is Verdict.hold or (hold_enabled and not host_mode)
                    failed_stage = res.stage
                else:
                    if run["retry_stage"]:
                        run = await self._clear_retry(u, run)
                    run, next_stage, failing = await self._advance(
                        u, run, after_ordinal=int(stage["ordinal"]), inline=inline, host_mode=host_mode,
                    )
                    if failing is not None:
                        hold = hold_enabled and not host_mode
                        failed_stage = failing.stage
                reply = ResultReply(
                    stage=res.stage, verdict=verdict, reason=reason, next_state=run["state"],
                    next_stage=next_stage, hold=hold, breaches=breaches,
                    failed_stage=failed_stage, run_reason=run["reason"] if failed_stage else None,
                )
                await u.tx.execute(
                    "UPDATE stage_results SET reply_json = $4 WHERE run_id = $1 AND stage_name = $2 AND attempt = $3",
                    run_id, res.stage, int(stage["attempt"]), jdump(reply),
                )
            return reply
        except TransitionConflict:
            stored = await self._stored_reply(run_id, res.stage, int(stage["attempt"]), body_hash)
            if stored is not None:
                return stored
            raise conflict(f"run {run_id} changed while this result was processed; retry") from None

    async def _stored_reply(self, run_id: int, stage: str, attempt: int, body_hash: str) -> ResultReply | None:
        for _ in range(50):
            row = await self.db.fetchrow(
                "SELECT body_hash, reply_json FROM stage_results WHERE run_id = $1 AND stage_name = $2 AND attempt = $3",
                run_id, stage, attempt,
            )
            if row is None:
                return None
            if row["body_hash"] != body_hash:
                raise conflict(
                    f"a different result for stage {stage!r} (attempt {attempt}) was already accepted",
                    stage=stage, attempt=attempt,
                )
            if row["reply_json"]:
                return msgspec.json.decode(row["reply_json"], type=ResultReply)
            await anyio.sleep(0.05)  # the first copy is still being committed
        raise conflict("the same result is still being processed; retry")

    @staticmethod
    def _breach(engine: ThresholdEngine, samples: list[Measurement], b: Any) -> Breach:
        rule = engine.rules[b.rule]
        s = samples[b.sample]
        obs = b.observed
        if isinstance(obs, float) and obs != obs:
            obs = None
        return Breach(stage=s.stage, kind=s.kind, key=s.key, op=rule.op, threshold=rule.threshold, observed=obs, severity=rule.severity.value)


def critical_reason(engine: ThresholdEngine, samples: list[Measurement], critical_now: list[Evaluation],
                    streamed: list[dict[str, Any]]) -> str:
    """A failed stage's reason: the first critical breach in its result, else the first
    one judged while its samples streamed in."""
    if critical_now:
        b = critical_now[0]
        rule = engine.rules[b.rule]
        s = samples[b.sample]
        return f"critical threshold breach: {s.kind} {s.key} = {b.observed!r} ({rule.op} {rule.threshold})"
    r = streamed[0]
    obs = r["observed"] if r["observed"] is not None else r["observed_text"]
    return f"critical threshold breach during the stage: {r['kind']} {r['key']} = {obs!r}"
