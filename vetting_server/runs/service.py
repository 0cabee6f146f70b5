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

:class:`RunService` keeps creation, transitions and the pipeline's advance; the agent's
session (:mod:`.sessions`), stage results (:mod:`.results`) and holds and operator
actions (:mod:`.actions`) are its parts, each in a module of its own.
"""

from __future__ import annotations

from typing import Any

from vetting_core.events import DEFAULT_SEVERITY, RunEvent
from vetting_core.model import stops_run
from vetting_core.plugins import UnknownNameError
from vetting_core.profiles import ProfileError, plan_run
from vetting_core.protocol import LogLine, StageResult
from vetting_core.specdiff import SpecIgnore, spec_to_dict
from vetting_core.statemachine import InvalidTransition, RunEventType, RunState, transition
from vetting_core.thresholds import ThresholdEngine

from ..db.database import iso, update_unchanged, utcnow
from ..errors import ApiError
from ..hosts.rules import FieldError, parse_host_spec
from ..boot.power import KEEP, power_due
from ..runtime import Runtime, Unit
from .retry import TransitionConflict
from .tokens import issue_run_token
from .actions import OperatorActions
from .results import StageResults
from .rows import SETTLED, failed_result, jdump, jload, run_reason
from .sessions import AgentSessions

E = RunEventType


class RunService(AgentSessions, StageResults, OperatorActions):
    """A run's whole life in the database: creation, compare-and-set transitions and the
    pipeline's advance (here); the agent's hello and claim (:mod:`.sessions`); stage
    results and their judging (:mod:`.results`); holds and operator actions
    (:mod:`.actions`). One per server process (``rt.service``)."""

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
        if not await update_unchanged(u.tx, "runs", run, updates):
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
            ignored = await self.rt.hosts.ignores(int(host["id"]))
            spec.ignore = [*spec.ignore, *[SpecIgnore(field=r["field"], actual=r["actual"]) for r in ignored]]
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
                        u, run, event, reason=run_reason(s["name"], res.verdict, res.reason), stage=s["name"],
                        failed_stage=s["name"], current_stage=None, **failed_result(res.verdict),
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


    async def _clear_retry(self, u: Unit, run: dict[str, Any]) -> dict[str, Any]:
        n = await u.tx.execute(
            "UPDATE runs SET retry_stage = NULL, version = version + 1, changed_at = $3 WHERE id = $1 AND version = $2",
            int(run["id"]), int(run["version"]), self.rt.changed_now(),
        )
        if n != 1:
            raise TransitionConflict("run changed concurrently")
        u.fx.runs.add(int(run["id"]))
        return {**run, "retry_stage": None, "version": int(run["version"]) + 1}


__all__ = ["RunService", "TransitionConflict", "iso", "jdump", "jload"]
