"""Build a :class:`~vetting_core.model.RunRecord` from stage results, for callers that
have no database: the agent's local mode and tests that run real stages.

The server assembles its records from its tables instead; both end in the same
report builders.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec

from vetting_core.model import (
    Event,
    Host,
    Measurement,
    Run,
    RunRecord,
    SpecDiff,
    Stage,
    ThresholdEvaluation,
    ThresholdRule,
)
from vetting_core.protocol import StageResult
from vetting_core.records import OperatorSpec
from vetting_core.thresholds import BUILTIN_OPERATORS, ThresholdEngine


def judge(
    measurements: Sequence[Measurement],
    rules: Sequence[ThresholdRule],
    operators: Mapping[str, OperatorSpec] | None = None,
) -> list[ThresholdEvaluation]:
    """Breaches of ``rules`` among ``measurements`` (one threshold engine, as in a run)."""
    ops = dict(operators) if operators else {op.name: op for op in BUILTIN_OPERATORS}
    engine = ThresholdEngine(rules, ops)
    result = engine.evaluate(measurements)
    out = []
    for b in result.breaches:
        rule = engine.rules[b.rule]
        m = measurements[b.sample]
        out.append(
            ThresholdEvaluation(
                rule_id=rule.id if rule.id is not None else b.rule,
                stage=m.stage,
                kind=m.kind,
                key=m.key,
                ts=m.ts,
                observed=b.observed,
                passed=False,
                severity=rule.severity,
            )
        )
    return out


def record_from_results(
    *,
    host: Host,
    run: Run,
    results: Sequence[StageResult],
    measurements: Iterable[Measurement] | None = None,
    thresholds: Sequence[ThresholdRule] = (),
    operators: Mapping[str, OperatorSpec] | None = None,
    inventory: Mapping[str, Any] | None = None,
    spec_diffs: Sequence[SpecDiff] = (),
    events: Sequence[Event] = (),
) -> RunRecord:
    """A record of ``results`` in pipeline order. ``measurements`` defaults to the
    results' own samples (pass the sink's when they were streamed instead). Rules
    without an ``id`` are numbered by position so breaches can name them."""
    rules = [r if r.id is not None else _with_id(r, i + 1) for i, r in enumerate(thresholds)]
    samples = list(measurements) if measurements is not None else [m for r in results for m in r.measurements]
    inv = (
        dict(inventory)
        if inventory is not None
        else next((dict(r.inventory) for r in results if r.inventory), {})
    )
    return RunRecord(
        host=host,
        run=run,
        stages=[
            Stage(
                name=r.stage,
                ordinal=i,
                state=r.verdict,
                reason=r.reason,
                started_at=r.started_at,
                completed_at=r.completed_at,
                summary=r.summary,
            )
            for i, r in enumerate(results)
        ],
        substeps=[s for r in results for s in r.substeps],
        measurements=samples,
        thresholds=rules,
        evaluations=judge(samples, rules, operators) if rules else [],
        spec_diffs=list(spec_diffs),
        firmware=[f for r in results for f in r.firmware],
        artifacts=[a for r in results for a in r.artifacts],
        inventory=inv,
        events=list(events),
    )


def _with_id(rule: ThresholdRule, n: int) -> ThresholdRule:
    return msgspec.structs.replace(rule, id=n)
