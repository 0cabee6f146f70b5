"""``judge_stage``: the one rule that turns a passed stage with a critical breach into a
failed one, shared by the server, local mode and the plugin test kit."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from vetting_core.model import Measurement, Severity, ThresholdRule, Verdict
from vetting_core.thresholds import BUILTIN_OPERATORS, ThresholdEngine, judge_stage

OPS = {op.name: op for op in BUILTIN_OPERATORS}
TS = datetime(2026, 11, 23, tzinfo=UTC)


def engine() -> ThresholdEngine:
    return ThresholdEngine(
        [
            ThresholdRule(kind="temp", key="cpu/*", op="lte", threshold=95.0, severity=Severity.critical),
            ThresholdRule(kind="fan", key="*", op="gte", threshold=500.0, severity=Severity.warning),
        ],
        OPS,
    )


def samples(temp: float, fan: float) -> list[Measurement]:
    return [
        Measurement(ts=TS, stage="CPUStress", kind="temp", key="cpu/package0", value=temp),
        Measurement(ts=TS, stage="CPUStress", kind="fan", key="fan1", value=fan),
    ]


def judged(temp: float, fan: float, verdict: Verdict, reason: str | None = None):
    e = engine()
    batch = samples(temp, fan)
    critical = e.critical(e.evaluate(batch).breaches)
    return judge_stage(
        verdict, reason, critical,
        lambda c: f"critical threshold breach: {batch[c[0].sample].key} = {c[0].observed!r}",
    )


def test_critical_breach_fails_a_passed_stage_with_the_callers_reason():
    verdict, reason = judged(101.0, 900.0, Verdict.passed, None)
    assert verdict is Verdict.failed
    assert reason == "critical threshold breach: cpu/package0 = 101.0"


def test_warning_breach_leaves_the_verdict_alone():
    assert judged(60.0, 100.0, Verdict.passed, "fine") == (Verdict.passed, "fine")


def test_no_breach_keeps_the_plugins_verdict_and_reason():
    assert judged(60.0, 900.0, Verdict.passed, None) == (Verdict.passed, None)


@pytest.mark.parametrize("verdict", [Verdict.failed, Verdict.cannot_run, Verdict.skipped, Verdict.hold])
def test_a_stage_that_did_not_pass_keeps_its_own_verdict_and_reason(verdict):
    assert judged(101.0, 900.0, verdict, "the plugin's reason") == (verdict, "the plugin's reason")


def test_without_why_the_reason_still_says_what_happened():
    assert judge_stage(Verdict.passed, None, ["anything"]) == (Verdict.failed, "critical threshold breach")


def test_why_is_called_only_when_the_verdict_changes():
    def boom(_):
        raise AssertionError("why() called for a stage that keeps its verdict")

    assert judge_stage(Verdict.passed, None, [], boom).verdict is Verdict.passed
    assert judge_stage(Verdict.failed, "x", [1], boom).verdict is Verdict.failed
