"""Local mode: the whole pipeline on this machine, no orchestrator.

What a hardware engineer runs first (``vetting-agent local --profile quick --out DIR``):
the same plugins, the same plan (:func:`vetting_core.profiles.plan_run`), the same
thresholds (:class:`~vetting_core.thresholds.ThresholdEngine`) and the same spec diff
as a run driven by the orchestrator, with the orchestrator's part done in-process:
SpecValidate runs here, every sample (stage measurements and the sensor sidecar) is
judged here — a critical breach fails the stage even when the plugin passed — and the
JSON/HTML/OCP reports are written by :mod:`vetting_reports` into ``DIR``.

Like the orchestrator, the pipeline stops at the first failed stage (the remaining
stages stay ``pending`` in the report) unless ``keep_going`` is set. Local mode is
non-destructive unless ``allow_destructive`` is set explicitly.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import anyio
import msgspec
import structlog

from vetting_core.context import build_context, stage_workdir, utcnow
from vetting_core.model import (
    Event,
    Host,
    Measurement,
    Run,
    RunRecord,
    SpecDiff,
    Stage,
    SubStep,
    ThresholdEvaluation,
    Verdict,
    completed_result,
    stops_run,
)
from vetting_core.plugins import Registry
from vetting_core.profiles import ProfileError, plan_run
from vetting_core.protocol import LogLine, StageResult
from vetting_core.specdiff import ExpectedSpec, diff_spec, parse_spec, spec_to_dict
from vetting_core.statemachine import RunState
from vetting_core.thresholds import ThresholdEngine, judge_stage

from .execution import run_planned
from .netinfo import boot_id
from .progress import ProgressPrinter
from .sidecar import SensorSidecar

log = structlog.get_logger()

NETWORK_STAGE = "Network"


@dataclass
class LocalOptions:
    profile: str = "quick"
    out_dir: Path = Path("./vetting-report")
    spec_path: Path | None = None
    stages: Sequence[str] | None = None
    iperf_peer: str | None = None
    keep_going: bool = False
    allow_destructive: bool = False
    sidecar: bool = True
    sidecar_sources: list[Any] | None = None
    sensor_interval_s: float = 1.0
    ipmi_interval_s: float = 30.0
    progress_stream: TextIO | None = None
    host_name: str | None = None
    command: str | None = None  # the agent's command line: the report's origin of the run


class LocalSink:
    """Keeps everything for the report; forwards progress to the printer; writes every
    log line to ``agent.log`` as it comes (a crash leaves the log behind)."""

    def __init__(self, log_file: TextIO, printer: ProgressPrinter) -> None:
        self.lines = 0
        self.samples: list[Measurement] = []
        self.log_file = log_file
        self.printer = printer

    def log(self, line: LogLine) -> None:
        self.lines += 1
        self.log_file.write(f"{line.ts.isoformat()} {line.stage or '-'} {line.level.upper()} {line.message}\n")

    def measurement(self, sample: Measurement) -> None:
        self.samples.append(sample)

    def progress(self, stage: str, fraction: float | None, message: str) -> None:
        self.printer.update(stage, fraction, message)


@dataclass
class LocalOutcome:
    passed: bool
    record: RunRecord
    reports: dict[str, Any] = field(default_factory=dict)
    failed_stage: str | None = None
    reason: str | None = None
    incomplete: bool = False  # nothing failed, but a stage could not run here

    @property
    def exit_code(self) -> int:
        """0 passed, 1 failed, 3 incomplete (a stage could not run here)."""
        return 1 if not self.passed else (3 if self.incomplete else 0)


def load_spec(path: Path | None) -> tuple[ExpectedSpec | None, str]:
    if path is None:
        return None, ""
    text = Path(path).read_text()
    return parse_spec(text), text


def _breach_reason(engine: ThresholdEngine, breaches: list[Any], samples: list[Measurement]) -> str:
    parts = []
    for b in breaches[:3]:
        rule = engine.rules[b.rule]
        s = samples[b.sample]
        parts.append(f"{s.kind}/{s.key} = {b.observed!r} breaches {rule.op} {rule.threshold!r}")
    more = f" (+{len(breaches) - 3} more)" if len(breaches) > 3 else ""
    return "critical threshold breach: " + "; ".join(parts) + more


async def run_local(registry: Registry, options: LocalOptions) -> LocalOutcome:
    spec, spec_text = load_spec(options.spec_path)
    host_params: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (spec.params if spec else {}).items()}
    if options.iperf_peer:
        host_params.setdefault(NETWORK_STAGE, {})["server"] = options.iperf_peer
    plan = plan_run(
        registry,
        options.profile,
        non_destructive=not options.allow_destructive,
        host_params=host_params,
        host_thresholds=list(spec.thresholds) if spec else [],
        only=list(options.stages) if options.stages else None,
    )
    if options.stages:
        planned_names = {p.name for p in plan.stages}
        outside = [s for s in options.stages if s not in planned_names]
        if outside:
            raise ProfileError(
                f"stage(s) {', '.join(outside)} are not part of profile {options.profile!r} "
                f"(its stages: {', '.join(sorted(planned_names)) or 'none'})"
            )
    if not plan.stages:
        raise ProfileError(f"profile {options.profile!r} selects no installed stage")
    engine = ThresholdEngine(plan.thresholds, registry.operators)
    spec_dict = spec_to_dict(spec) if spec is not None else None

    out_dir = Path(options.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    workdir = out_dir / "work"
    stream = options.progress_stream or sys.stdout
    printer = ProgressPrinter(len(plan.stages), stream)
    hostname = options.host_name or socket.gethostname()
    started = utcnow()
    stages: list[Stage] = [Stage(name=p.name, ordinal=p.ordinal) for p in plan.stages]
    substeps: list[SubStep] = []
    evaluations: list[ThresholdEvaluation] = []
    spec_diffs: list[SpecDiff] = []
    firmware = []
    artifacts = []
    events: list[Event] = [Event(ts=started, kind="RunStarted", message=f"local run, profile {plan.profile}")]
    inventory: dict[str, Any] = {}
    failed_stage: str | None = None
    fail_reason: str | None = None
    log_path = out_dir / "agent.log"

    print(
        f"vetting-agent local: profile {plan.profile}, {len(plan.stages)} stages "
        f"({', '.join(p.name for p in plan.stages)}), "
        f"{'non-destructive' if plan.non_destructive else 'DESTRUCTIVE'}; reports in {out_dir}",
        file=stream,
        flush=True,
    )
    with log_path.open("a", buffering=1) as log_file:
        sink = LocalSink(log_file, printer)
        sidecar = SensorSidecar(
            sink.measurement,
            sources=options.sidecar_sources if options.sidecar else [],
            interval_s=options.sensor_interval_s,
            ipmi_interval_s=options.ipmi_interval_s,
        )
        print(f"sensors: {sidecar.describe()}", file=stream, flush=True)
        async with anyio.create_task_group() as tg:
            tg.start_soon(sidecar.run)

            async def ticker() -> None:
                while True:
                    await anyio.sleep(1.0)
                    printer.tick()

            tg.start_soon(ticker)
            for n, planned in enumerate(plan.stages, start=1):
                row = stages[planned.ordinal]
                if failed_stage is not None and not options.keep_going:
                    break
                printer.start_stage(n, planned.name)
                first_sample = len(sink.samples)
                ctx = build_context(
                    planned.name,
                    registry=registry,
                    params=planned.params,
                    sink=sink,
                    workdir=stage_workdir(workdir, planned.name, planned.ordinal),
                    profile=plan.profile,
                    run_id=None,
                    inventory=inventory,
                    spec=spec_dict,
                    non_destructive=plan.non_destructive,
                    override_flags={},
                    thresholds=plan.thresholds,
                )
                sidecar.stage = planned.name
                t0 = time.monotonic()
                result: StageResult = await run_planned(registry, planned, ctx)
                sidecar.stage = None
                stage_samples = sink.samples[first_sample:]
                judged = engine.evaluate(stage_samples)
                for b in judged.breaches:
                    rule = engine.rules[b.rule]
                    s = stage_samples[b.sample]
                    evaluations.append(
                        ThresholdEvaluation(
                            rule_id=b.rule, stage=s.stage, kind=s.kind, key=s.key, ts=s.ts,
                            observed=b.observed, passed=False, severity=rule.severity,
                        )
                    )
                verdict, reason = judge_stage(
                    result.verdict, result.reason, engine.critical(judged.breaches),
                    lambda critical: _breach_reason(engine, critical, stage_samples),
                )
                if result.inventory is not None:
                    inventory = result.inventory
                if planned.runs_on == "orchestrator" and spec is not None and inventory and not spec_diffs:
                    spec_diffs = diff_spec(spec, inventory)
                row.state, row.reason = verdict, reason
                row.started_at, row.completed_at = result.started_at, result.completed_at
                row.summary = dict(result.summary)
                substeps.extend(result.substeps)
                firmware.extend(result.firmware)
                artifacts.extend(result.artifacts)
                printer.finish_stage(planned.name, verdict.label, reason, time.monotonic() - t0)
                events.append(
                    Event(
                        ts=utcnow(),
                        kind="StageFinished",
                        level="error" if verdict is Verdict.failed else "info",
                        message=f"{planned.name}: {verdict.label}" + (f" ({reason})" if reason else ""),
                        data={"stage": planned.name, "verdict": verdict.value},
                    )
                )
                # local mode runs on an installed machine: a stage that could not run
                # (a tool missing) does not stop the run, it makes it incomplete
                if stops_run(verdict, live_image=False) and failed_stage is None:
                    failed_stage, fail_reason = planned.name, reason or verdict.value
            tg.cancel_scope.cancel()
        # a spec without an InventoryCheck/SpecValidate in the plan is still compared
        if spec is not None and inventory and not spec_diffs:
            spec_diffs = diff_spec(spec, inventory)

    passed = failed_stage is None
    run_result = completed_result(st.state for st in stages) if passed else "failed"
    not_run = [f"{st.name}: {st.reason}" for st in stages if st.state is Verdict.cannot_run]
    completed = utcnow()
    summary = fail_reason or (f"{len(not_run)} stage(s) could not run here: " + "; ".join(not_run) if not_run
                              else "all stages passed")
    events.append(Event(ts=completed, kind="RunCompleted" if passed else "RunFailed",
                        level="info" if run_result == "pass" else ("warning" if passed else "error"), message=summary))
    record = RunRecord(
        host=Host(
            name=hostname,
            mac="",
            boot_provider="local",
            expected_spec_yaml=spec_text,
            notes=f"local run (boot id {boot_id() or 'unknown'})",
        ),
        run=Run(
            host_id=0,
            state=(RunState.Completed if passed else RunState.Failed).value,
            result=run_result,
            failed_stage=failed_stage,
            reason=fail_reason or (summary if not_run else None),
            profile=plan.profile,
            non_destructive=plan.non_destructive,
            started_at=started,
            completed_at=completed,
            origin=options.command,
        ),
        stages=stages,
        substeps=substeps,
        measurements=sink.samples,
        thresholds=plan.thresholds,
        evaluations=evaluations,
        spec_diffs=spec_diffs,
        firmware=firmware,
        artifacts=artifacts,
        inventory=inventory,
        events=events,
        log_path=str(log_path),
    )
    (out_dir / "record.json").write_bytes(msgspec.json.encode(record))
    reports = write_reports(record, registry, out_dir)
    for kind, path in reports.items():
        print(f"report ({kind}): {path}", file=stream, flush=True)
    verdict_line = {"pass": "PASSED", "incomplete": f"INCOMPLETE: {summary}"}.get(
        run_result, f"FAILED at {failed_stage}: {fail_reason}")
    print(f"result: {verdict_line}", file=stream, flush=True)
    return LocalOutcome(passed=passed, record=record, reports=reports, failed_stage=failed_stage,
                        reason=fail_reason or (summary if not_run else None), incomplete=run_result == "incomplete")


def write_reports(record: RunRecord, registry: Registry, out_dir: Path) -> dict[str, Any]:
    """Hand the record to :mod:`vetting_reports`; returns ``{kind: path}``."""
    from vetting_reports import write_reports as _write  # imported late: jinja2 is heavy

    paths = _write(record, registry, out_dir)
    if isinstance(paths, dict):
        return {str(k): str(v) for k, v in paths.items()}
    if hasattr(paths, "__struct_fields__") or hasattr(paths, "__dataclass_fields__"):
        return {k: str(v) for k, v in msgspec.to_builtins(paths).items() if v}
    return {str(i): str(p) for i, p in enumerate(paths)}
