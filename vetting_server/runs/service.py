"""The run lifecycle: creation, transitions (compare-and-set), claim, results, holds.

Every state change goes through :meth:`RunService.transition`, which looks the move
up in :mod:`vetting_core.statemachine` and applies it with
``UPDATE runs SET state = …, version = version + 1 WHERE id = … AND state = … AND
version = …``; a row count other than 1 means another request (or replica) moved the
run first, and the whole transaction is rolled back. ``version`` makes same-state
moves (``Running → Running`` when a stage passes) safe too.

A stage result is handled in one transaction: the result row (primary key run,
stage, attempt: a concurrent duplicate collides here), the stage row, sub-steps,
measurements and their threshold evaluations, spec diffs, firmware, artifacts, the
orchestrator-owned stages that follow (SpecValidate, run inline before the
transaction opens), and the transition. The reply is stored with the result, so a
retried identical result gets the identical reply and a different one gets 409.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import msgspec
import structlog

from vetting_core.context import StageContext, execute_stage
from vetting_core.events import DEFAULT_SEVERITY, RunEvent
from vetting_core.model import Measurement, Verdict, stops_run
from vetting_core.plugins import UnknownNameError
from vetting_core.profiles import ProfileError, plan_run
from vetting_core.protocol import (
    Breach,
    Claim,
    ClaimReply,
    Hello,
    HelloReply,
    HoldReply,
    HoldRequest,
    LogLine,
    PlannedStage,
    ResultReply,
    StageResult,
)
from vetting_core.specdiff import SpecIgnore, spec_to_dict
from vetting_core.statemachine import (
    AGENT_ACTIVE,
    InvalidTransition,
    RunEventType,
    RunState,
    transition,
)
from vetting_core.thresholds import EvaluationResult, ThresholdEngine

from .artifacts import check_agent_kinds, hold_dir
from ..db.database import as_dt, iso, utcnow
from ..errors import ApiError, conflict, not_found
from ..api.hosts import FieldError, parse_host_spec
from ..boot.power import KEEP, power_due
from ..ingest.writer import stored_seqs
from ..runtime import Runtime, Unit
from .retry import TransitionConflict, retry_on_conflict
from .tokens import issue_run_token

log = structlog.get_logger()

E = RunEventType
_json = msgspec.json.encode
_AGENT_ACTIVE = frozenset(s.value for s in AGENT_ACTIVE)
# stages the pipeline moves past (a stage that could not run, when that did not stop the run)
SETTLED = frozenset(v.value for v in (Verdict.passed, Verdict.skipped, Verdict.cannot_run))


def jdump(v: Any) -> str:
    return _json(v).decode()


def jload(v: str | None, default: Any = None) -> Any:
    return default if v is None else msgspec.json.decode(v)


class RunService:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.db = rt.db
        # an orchestrator-run stage's log lines, from its run until its outcome is stored
        # (in the same unit of work): keyed by (run id, stage name)
        self.orchestrator_logs: dict[tuple[int, str], list[LogLine]] = {}

    # ---------------------------------------------------------------- transitions
    async def transition(
        self,
        u: Unit,
        run: dict[str, Any],
        event: RunEventType,
        *,
        reason: str | None = None,
        actor: str | None = None,
        stage: str | None = None,
        message: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Apply ``event`` to ``run`` (a row dict) with compare-and-set; return the new row."""
        t = transition(run["state"], event)
        now = utcnow()
        updates: dict[str, Any] = dict(fields)
        updates["state"] = t.next.value
        updates["version"] = int(run["version"]) + 1
        updates["changed_at"] = self.rt.changed_now()
        if t.next.value != run["state"]:
            updates["state_changed_at"] = now
        if t.next is RunState.Failed:
            updates.setdefault("result", "fail")
            updates.setdefault("completed_at", now)
            if reason is not None:
                updates.setdefault("reason", reason)
        elif t.next is RunState.Completed:
            updates.setdefault("result", "pass")
            updates.setdefault("completed_at", now)
            if reason is not None:  # an incomplete run says which stages could not run
                updates.setdefault("reason", reason)
        elif t.next in (RunState.Released, RunState.Cancelled):
            if run.get("completed_at") is None:
                updates.setdefault("completed_at", now)
            if t.next is RunState.Cancelled:
                updates.setdefault("result", "cancelled")
                if reason is not None:
                    updates.setdefault("reason", reason)
        due = power_due(self.rt.settings, run, t.next, updates, now)
        if due is not KEEP:
            updates.setdefault("power_due_at", due)
        cols = list(updates)
        sets = ", ".join(f"{c} = ${i + 4}" for i, c in enumerate(cols))
        n = await u.tx.execute(
            f"UPDATE runs SET {sets} WHERE id = $1 AND state = $2 AND version = $3",
            int(run["id"]), run["state"], int(run["version"]), *[updates[c] for c in cols],
        )
        if n != 1:
            raise TransitionConflict(f"run {run['id']} changed concurrently")
        new = {**run, **updates}
        kind = t.notify.value if t.notify else "state"
        text = message or f"{run['state']} → {t.next.value} ({event.value})"
        if reason and reason not in text:
            text += f": {reason}"
        level = "error" if t.next is RunState.Failed else "info"
        await u.event(
            kind, text, run_id=int(run["id"]), host_id=int(run["host_id"]), level=level, actor=actor,
            data={"from": run["state"], "to": t.next.value, "event": event.value, "reason": reason, "stage": stage},
        )
        u.fx.runs.add(int(run["id"]))
        if t.next is RunState.Failed:
            # "update and re-vet" when firmware versions failed it: recorded before the report
            if self.rt.firmware is not None:
                from ..firmware.remediation import on_run_failed  # (imports this module)

                await on_run_failed(self.rt, u, new)
            # a failed run needs its report most: what failed and why, for the operator
            u.fx.after.append(lambda rid=int(run["id"]): self.rt.reporting.build(rid))
        if t.notify is not None:
            host_name = await u.tx.fetchval("SELECT name FROM hosts WHERE id = $1", int(run["host_id"]))
            u.fx.run_events.append(
                RunEvent(
                    kind=t.notify,
                    severity=DEFAULT_SEVERITY[t.notify],
                    ts=now,
                    run_id=int(run["id"]),
                    host_id=int(run["host_id"]),
                    host_name=host_name or "",
                    stage=stage or new.get("failed_stage") or new.get("current_stage"),
                    state=t.next.value,
                    message=text,
                    url=f"{self.rt.public_url}/api/v1/runs/{run['id']}",
                    data={"reason": reason} if reason else {},
                )
            )
        return new

    async def apply(self, run_id: int, event: RunEventType, *, expect: set[str] | None = None, **kw: Any) -> dict[str, Any] | None:
        """Load the run and apply one event in its own transaction. Returns the new row,
        or None when the run is not in an expected state / moved concurrently."""
        try:
            async with self.rt.unit() as u:
                run = await u.tx.fetchrow("SELECT * FROM runs WHERE id = $1", run_id)
                if run is None or (expect is not None and run["state"] not in expect):
                    return None
                return await self.transition(u, run, event, **kw)
        except (TransitionConflict, InvalidTransition):
            return None

    # ---------------------------------------------------------------- creation
    async def create_run(
        self,
        host: dict[str, Any],
        *,
        profile: str,
        non_destructive: bool,
        stages: list[str] | None,
        actor: str | None,
        origin: str | None = None,
    ) -> tuple[dict[str, Any], str]:
        try:
            spec = parse_host_spec(host["expected_spec_yaml"])
        except FieldError as exc:
            raise ApiError(422, f"host {host['name']}: stored expected spec is invalid: {exc}") from None
        if spec is not None:  # the differences this host's operators chose to ignore (the web UI's spec_ignores)
            spec.ignore = [*spec.ignore, *[SpecIgnore(field=r["field"], actual=r["actual"]) for r in await self.db.fetch(
                "SELECT field, actual FROM spec_ignores WHERE host_id = $1 ORDER BY id", int(host["id"]))]]
        if host["boot_provider"] == "agent":
            non_destructive = True  # host mode runs on an installed machine: never destructive
        try:
            plan = plan_run(
                self.rt.registry,
                profile,
                non_destructive=non_destructive,
                host_params=spec.params if spec else None,
                host_thresholds=spec.thresholds if spec else (),
                only=stages,
            )
        except ProfileError as exc:
            raise ApiError(422, f"profile: {exc}", {"field": "profile"}) from None
        except UnknownNameError as exc:
            raise ApiError(422, f"stages: {exc}", {"field": "stages"}) from None
        if not plan.stages:
            raise ApiError(422, f"profile: profile {profile!r} selects no installed stage", {"field": "profile"})
        # validate the rules now: a bad operator in a host override is the operator's to fix
        try:
            ThresholdEngine(plan.thresholds, self.rt.registry.operators)
        except ValueError as exc:
            raise ApiError(422, f"expected_spec_yaml: thresholds: {exc}", {"field": "expected_spec_yaml"}) from None
        token, digest = issue_run_token()
        now = utcnow()
        async with self.rt.unit() as u:
            run_id = await u.tx.fetchval(
                "INSERT INTO runs (host_id, state, version, agent_token_hash, profile, non_destructive, "
                "requested_stages_json, override_flags_json, expected_spec_json, actor, started_at, state_changed_at, origin) "
                "VALUES ($1, $2, 0, $3, $4, $5, $6, '{}', $7, $8, $9, $9, $10) RETURNING id",
                int(host["id"]), RunState.Registered.value, digest, profile, plan.non_destructive,
                None if stages is None else jdump(stages),
                None if spec is None else jdump(spec_to_dict(spec)), actor, now, origin,
            )
            run_id = int(run_id)
            await u.tx.executemany(
                "INSERT INTO stages (run_id, name, ordinal, state, runs_on, destructive, timeout_s, params_json, attempt) "
                "VALUES ($1, $2, $3, 'pending', $4, $5, $6, $7, 0)",
                [
                    (run_id, s.name, s.ordinal, s.runs_on, s.destructive, float(s.timeout_s), jdump(s.params))
                    for s in plan.stages
                ],
            )
            await u.tx.executemany(
                "INSERT INTO thresholds (run_id, ordinal, stage_name, kind, key, op, threshold, threshold_text, "
                "nominal, unit, severity, source) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                [
                    (
                        run_id, i, r.stage, r.kind, r.key, r.op,
                        None if isinstance(r.threshold, str) else float(r.threshold),
                        r.threshold if isinstance(r.threshold, str) else None,
                        float(r.nominal), r.unit, r.severity.value, r.source,
                    )
                    for i, r in enumerate(plan.thresholds)
                ],
            )
            run = await u.tx.fetchrow("SELECT * FROM runs WHERE id = $1", run_id)
            await u.event(
                "audit.run_started",
                f"run {run_id} started on {host['name']}: profile {profile}"
                + (" (non-destructive)" if plan.non_destructive else "")
                + (f", stages {', '.join(stages)}" if stages else ""),
                run_id=run_id, host_id=int(host["id"]), actor=actor,
                data={"profile": profile, "non_destructive": plan.non_destructive, "stages": [s.name for s in plan.stages]},
            )
            run = await self.transition(u, run, E.enqueue, actor=actor)
        self.rt.wake_dispatcher()
        return run, token

    # ---------------------------------------------------------------- agent: hello / claim
    async def hello(self, run_id: int, body: Hello, peer_ip: str | None) -> HelloReply:
        """The agent booted. The first hello binds the run token to that agent (its boot
        id and source address): a later hello from another boot or address is refused
        (409) and audited, so a copied token cannot take the run over. An agent that
        restarts within the same boot is the same agent."""
        now = utcnow()
        peer = (peer_ip or "")[:100]
        boot_id = body.boot_id[:100]
        fields = dict(
            hello_at=now, last_heartbeat_at=now, agent_version=body.agent_version[:100],
            agent_hostname=body.hostname[:255], agent_ip=(body.ip or peer_ip or "")[:100] or None,
            agent_boot_id=boot_id, agent_peer=peer,
        )

        async def attempt() -> HelloReply | tuple[Any, Any, int]:
            async with self.rt.unit() as u:
                run = await u.tx.fetchrow("SELECT * FROM runs WHERE id = $1", run_id)
                if run is None:
                    raise not_found(f"run {run_id} not found")
                if run["agent_peer"] is not None and (run["agent_boot_id"] or "", run["agent_peer"]) != (boot_id, peer):
                    return (run["agent_boot_id"], run["agent_peer"], int(run["host_id"]))
                try:
                    transition(run["state"], E.hello)
                except InvalidTransition:
                    if run["state"] not in _AGENT_ACTIVE:
                        raise conflict(f"run {run_id} is {run['state']}; hello is not accepted") from None
                    cols = list(fields)
                    await u.tx.execute(
                        f"UPDATE runs SET {', '.join(f'{c} = ${i + 2}' for i, c in enumerate(cols))} WHERE id = $1",
                        run_id, *[fields[c] for c in cols],
                    )
                    new = run
                else:
                    new = await self.transition(
                        u, run, E.hello, message=f"agent {body.hostname} said hello ({body.mode} mode, {body.agent_version})",
                        **fields,
                    )
            self.rt.last_heartbeat[run_id] = now
            return HelloReply(run_id=run_id, state=new["state"], server_time=now)

        outcome = await retry_on_conflict(run_id, attempt)
        if isinstance(outcome, HelloReply):
            return outcome
        *bound, host_id = outcome  # the run token is bound to another agent: refused and audited
        text = (f"hello refused: the run token is bound to the agent that said hello first (boot {bound[0] or '?'} "
                f"from {bound[1] or '?'}); this one is boot {boot_id or '?'} from {peer or '?'} ({body.hostname})")
        async with self.rt.unit() as u:
            await u.event("audit.hello_refused", text, run_id=run_id, host_id=host_id, level="warning",
                          data={"peer": peer, "boot_id": boot_id, "hostname": body.hostname[:255],
                                "bound_peer": bound[1], "bound_boot_id": bound[0]})
        raise conflict(text)

    async def claim(self, run_id: int, body: Claim) -> ClaimReply:
        async def attempt() -> None:
            async with self.rt.unit() as u:
                run = await u.tx.fetchrow("SELECT * FROM runs WHERE id = $1", run_id)
                if run is None:
                    raise not_found(f"run {run_id} not found")
                if run["state"] not in (RunState.Booting.value, RunState.Running.value):
                    if run["state"] in (RunState.Queued.value, RunState.WaitingBoot.value):
                        raise conflict(f"run {run_id} is {run['state']}: POST /hello before /claim")
                    raise conflict(f"run {run_id} is {run['state']}; it cannot be claimed")
                first = run["state"] == RunState.Booting.value
                run = await self.transition(
                    u, run, E.claim,
                    message=f"agent {body.hostname} claimed the run" if first else f"agent {body.hostname} resumed the run",
                )
                if first:
                    await self._advance(u, run, after_ordinal=-1)

        await retry_on_conflict(run_id, attempt)
        return await self.claim_reply(run_id)

    async def claim_reply(self, run_id: int) -> ClaimReply:
        db = self.db
        run = await db.fetchrow("SELECT r.*, h.name AS host_name FROM runs r JOIN hosts h ON h.id = r.host_id WHERE r.id = $1", run_id)
        stages = await db.fetch("SELECT * FROM stages WHERE run_id = $1 ORDER BY ordinal", run_id)
        engine = await self.rt.engine(run_id)
        seqs = await stored_seqs(db, run_id)
        log_seq, log_max, log_gaps = seqs.get("log", (0, 0, []))
        sensor_seq, sensor_max, sensor_gaps = seqs.get("sensor", (0, 0, []))
        t = self.rt.settings.timeouts
        return ClaimReply(
            run_id=run_id,
            host_name=run["host_name"],
            profile=run["profile"],
            non_destructive=bool(run["non_destructive"]),
            stages=[
                PlannedStage(
                    name=s["name"], ordinal=int(s["ordinal"]), params=jload(s["params_json"], {}),
                    runs_on=s["runs_on"], destructive=bool(s["destructive"]), timeout_s=float(s["timeout_s"]),
                    state=Verdict(s["state"]),
                )
                for s in stages
            ],
            thresholds=engine.rules,
            expected_spec=jload(run["expected_spec_json"]),
            override_flags=jload(run["override_flags_json"], {}),
            heartbeat_interval_s=t.heartbeat_interval_s,
            heartbeat_timeout_s=t.heartbeat_timeout_s,
            log_seq=log_seq, log_seq_max=log_max, log_gaps=log_gaps,
            sensor_seq=sensor_seq, sensor_seq_max=sensor_max, sensor_gaps=sensor_gaps,
            max_batch_bytes=self.rt.settings.server.max_agent_body_bytes,
            max_artifact_bytes=self.rt.settings.server.max_artifact_bytes,
        )

    # ---------------------------------------------------------------- advancing
    async def _advance(
        self, u: Unit, run: dict[str, Any], *, after_ordinal: int, inline: dict[str, StageResult] | None = None,
        host_mode: bool | None = None,
    ) -> tuple[dict[str, Any], str | None, StageResult | None]:
        """Move past ``after_ordinal``: record orchestrator-owned stages already executed
        (``inline``), then make the next agent stage current, or finish the pipeline.
        Returns (run row, next stage name, failing orchestrator result)."""
        inline = inline or {}
        stages = await u.tx.fetch(
            "SELECT * FROM stages WHERE run_id = $1 AND ordinal > $2 ORDER BY ordinal", int(run["id"]), after_ordinal
        )
        now = utcnow()
        for s in stages:
            if s["state"] in SETTLED:
                continue
            if s["runs_on"] == "orchestrator":
                res = inline.get(s["name"])
                if res is None:  # not executed before the transaction (claim path): run it here
                    res = await self.run_orchestrator_stage(run, s["name"], tx=u.tx)
                await self._store_stage_outcome(u, run, s, res, res.verdict, res.reason)
                if host_mode is None:
                    host_mode = await self._host_mode(run, tx=u.tx)
                if stops_run(res.verdict, live_image=not host_mode):
                    event = E.spec_mismatch if res.summary.get("spec_diffs") else E.stage_failed
                    run = await self.transition(
                        u, run, event, reason=_run_reason(s["name"], res.verdict, res.reason), stage=s["name"],
                        failed_stage=s["name"], current_stage=None, **_failed_result(res.verdict),
                    )
                    return run, None, res
                continue
            await u.tx.execute(
                "UPDATE stages SET state = 'running', started_at = $2, reason = NULL WHERE id = $1", int(s["id"]), now
            )
            if run["current_stage"] != s["name"]:
                run = await self.transition(
                    u, run, E.stage_passed, stage=s["name"], current_stage=s["name"],
                    message=f"stage {s['name']} started",
                ) if run["state"] == RunState.Running.value and after_ordinal >= 0 else await self._set_current(u, run, s["name"])
            return run, s["name"], None
        run = await self.transition(u, run, E.pipeline_done, current_stage=None, message="all stages done: building the report")
        u.fx.after.append(lambda rid=int(run["id"]): self.rt.reporting.build(rid))
        return run, None, None

    async def _host_mode(self, run: dict[str, Any], tx: Any = None) -> bool:
        """Host mode (boot provider ``agent``): an installed machine, not a live image."""
        return await (tx or self.db).fetchval("SELECT boot_provider FROM hosts WHERE id = $1", int(run["host_id"])) == "agent"

    async def _set_current(self, u: Unit, run: dict[str, Any], name: str) -> dict[str, Any]:
        n = await u.tx.execute(
            "UPDATE runs SET current_stage = $2, version = version + 1, changed_at = $4 WHERE id = $1 AND version = $3",
            int(run["id"]), name, int(run["version"]), self.rt.changed_now(),
        )
        if n != 1:
            raise TransitionConflict("run changed concurrently")
        u.fx.runs.add(int(run["id"]))
        return {**run, "current_stage": name, "version": int(run["version"]) + 1}

    async def run_orchestrator_stage(self, run: dict[str, Any], name: str, tx: Any = None) -> StageResult:
        """Execute an orchestrator-owned stage (SpecValidate) here, with the stored inventory."""
        reg = self.rt.registry
        db = tx or self.db
        if name not in reg.stages:
            return StageResult(stage=name, verdict=Verdict.failed, reason=f"stage {name!r} is not installed on the orchestrator")
        row = await db.fetchrow("SELECT inventory_json, expected_spec_json, profile, non_destructive, override_flags_json FROM runs WHERE id = $1", int(run["id"]))
        params = await db.fetchval("SELECT params_json FROM stages WHERE run_id = $1 AND name = $2", int(run["id"]), name)
        from vetting_core.context import MemorySink

        sink = MemorySink()
        workdir = Path(tempfile.mkdtemp(prefix=f"vetting-run{run['id']}-", dir=self._scratch()))
        try:
            ctx = StageContext(
                stage=name, sink=sink, workdir=workdir, params=jload(params, {}), profile=row["profile"],
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
        body_hash = hashlib.sha256(_json(res)).hexdigest()
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
        verdict, reason = res.verdict, res.reason
        wants_hold = res.hold or verdict is Verdict.hold
        if verdict is Verdict.passed and (critical_now or streamed):
            verdict = Verdict.failed
            if critical_now:
                b = critical_now[0]
                rule = engine.rules[b.rule]
                s = res.measurements[b.sample]
                reason = f"critical threshold breach: {s.kind} {s.key} = {b.observed!r} ({rule.op} {rule.threshold})"
            else:
                r = streamed[0]
                obs = r["observed"] if r["observed"] is not None else r["observed_text"]
                reason = f"critical threshold breach during the stage: {r['kind']} {r['key']} = {obs!r}"
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
                        u, run, E.stage_failed, reason=_run_reason(res.stage, verdict, reason), stage=res.stage,
                        failed_stage=res.stage, retry_stage=None, **_failed_result(verdict),
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

    async def _clear_retry(self, u: Unit, run: dict[str, Any]) -> dict[str, Any]:
        n = await u.tx.execute(
            "UPDATE runs SET retry_stage = NULL, version = version + 1, changed_at = $3 WHERE id = $1 AND version = $2",
            int(run["id"]), int(run["version"]), self.rt.changed_now(),
        )
        if n != 1:
            raise TransitionConflict("run changed concurrently")
        u.fx.runs.add(int(run["id"]))
        return {**run, "retry_stage": None, "version": int(run["version"]) + 1}

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

    # ---------------------------------------------------------------- hold / operator actions
    async def hold(self, run_id: int, body: HoldRequest, peer_ip: str | None) -> HoldReply:
        if not self.rt.settings.hold.enabled:
            raise conflict("holds are disabled on this server (hold.enabled: false)")
        run = await self.db.fetchrow("SELECT * FROM runs WHERE id = $1", run_id)
        if run["state"] not in (RunState.Failed.value, RunState.FailedHolding.value):
            raise conflict(f"run {run_id} is {run['state']}; a hold opens only after a failure")
        ip = (body.ip or peer_ip or "").strip()[:100]
        key_dir = hold_dir(self.rt, run_id)
        priv, pub = await _ssh_keypair(key_dir, f"vetting-hold-run-{run_id}")
        expires = utcnow() + timedelta(hours=self.rt.settings.hold.key_ttl_hours)
        digest = hashlib.sha256(priv.read_bytes()).hexdigest()
        async with self.rt.unit() as u:
            run = await u.tx.fetchrow("SELECT * FROM runs WHERE id = $1", run_id)
            try:
                run = await self.transition(
                    u, run, E.hold_opened, stage=run["failed_stage"], hold_ip=ip or None, hold_expires_at=expires,
                    message=f"hold opened: ssh root@{ip}" + (f" ({body.reason})" if body.reason else ""),
                )
            except InvalidTransition:
                raise conflict(f"run {run_id} is {run['state']}; a hold opens only after a failure") from None
            await u.tx.execute(
                "INSERT INTO artifacts (run_id, stage_id, kind, path, sha256, size_bytes, location, created_at) "
                "VALUES ($1, NULL, 'hold_key', $2, $3, $4, 'server', $5)",
                run_id, str(priv), digest, priv.stat().st_size, utcnow(),
            )
        return HoldReply(
            authorized_key=pub, expires_at=expires, user="root",
            ssh_command=f"ssh -i {priv} root@{ip}" if ip else "",
        )

    async def operator_action(self, run_id: int, action: str, *, actor: str, reason: str = "", flags: dict[str, Any] | None = None) -> dict[str, Any]:
        async def attempt() -> dict[str, Any]:
            async with self.rt.unit() as u:
                run = await u.tx.fetchrow("SELECT * FROM runs WHERE id = $1", run_id)
                if run is None:
                    raise not_found(f"run {run_id} not found")
                try:
                    if action == "cancel":
                        new = await self.transition(u, run, E.cancel, actor=actor, reason=reason or f"cancelled by {actor}", retry_stage=None)
                    elif action == "release":
                        new = await self.transition(u, run, E.release, actor=actor, message=f"released by {actor}" + (f": {reason}" if reason else ""))
                    elif action == "override":
                        new = await self._override(u, run, actor, flags or {"wipe": True}, reason)
                    elif action == "retry_stage":  # the failed stage again, no gate overridden
                        new = await self._override(u, run, actor, {}, reason)
                    else:
                        raise ValueError(action)
                except InvalidTransition:
                    raise conflict(f"run {run_id} is {run['state']}; cannot {action} it", state=run["state"]) from None
                await u.event(
                    f"audit.{action}", f"{action} by {actor}" + (f": {reason}" if reason else ""),
                    run_id=run_id, host_id=int(run["host_id"]), actor=actor, data={"flags": flags} if flags else None,
                )
            return new

        return await retry_on_conflict(run_id, attempt)

    async def _override(self, u: Unit, run: dict[str, Any], actor: str, flags: dict[str, Any], reason: str) -> dict[str, Any]:
        stage_name = run["failed_stage"]
        if run["state"] != RunState.FailedHolding.value:
            raise InvalidTransition(RunState(run["state"]), E.override)
        stage = await u.tx.fetchrow("SELECT * FROM stages WHERE run_id = $1 AND name = $2", int(run["id"]), stage_name)
        if stage is None:
            raise conflict(f"run {run['id']} has no failed stage to retry")
        if stage["runs_on"] == "orchestrator":
            raise conflict(f"stage {stage_name} runs on the orchestrator and cannot be retried; fix the host and start a new run")
        merged = {**jload(run["override_flags_json"], {}), **flags}
        await u.tx.execute(
            "UPDATE stages SET attempt = attempt + 1, state = 'running', reason = NULL, started_at = $2, completed_at = NULL WHERE id = $1",
            int(stage["id"]), utcnow(),
        )
        new = await self.transition(
            u, run, E.override, actor=actor, stage=stage_name, retry_stage=stage_name, current_stage=stage_name,
            failed_stage=None, result=None, reason=None, completed_at=None, override_flags_json=jdump(merged),
            message=f"override by {actor}: retry {stage_name} with {jdump(flags)}" if flags
            else f"retry of {stage_name} by {actor}" + (f": {reason}" if reason else ""),
        )
        eng = self.rt.engines.get(int(run["id"]))
        if eng is not None:
            eng.reset_baselines(stage_name)
        return new


def _run_reason(stage: str, verdict: Verdict, reason: str | None) -> str:
    """The run's reason when ``stage`` stops it: a stage that could not run says so."""
    if verdict is Verdict.cannot_run:
        return f"{stage} could not run here: {reason or 'no reason given'} (not a hardware failure)"
    return reason or f"stage {stage} {verdict.value}"


def _failed_result(verdict: Verdict) -> dict[str, str]:
    """``runs.result`` of a run a stage stopped: ``incomplete`` when it only could not run."""
    return {"result": "incomplete"} if verdict is Verdict.cannot_run else {}


async def _ssh_keypair(key_dir: Path, comment: str) -> tuple[Path, str]:
    """A fresh ed25519 key pair for one hold (re-issued on every /hold)."""
    key_dir.mkdir(parents=True, exist_ok=True)
    priv = key_dir / "id_ed25519"
    for p in (priv, priv.with_suffix(".pub")):
        p.unlink(missing_ok=True)
    try:
        await anyio.run_process(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(priv)])
    except (OSError, Exception) as exc:
        raise ApiError(500, f"could not generate the hold SSH key with ssh-keygen: {exc}") from None
    priv.chmod(0o600)
    return priv, priv.with_suffix(".pub").read_text().strip()


__all__ = ["RunService", "TransitionConflict", "iso", "jdump", "jload"]
