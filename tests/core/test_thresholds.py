"""Threshold operators at their boundaries and the engine's indexing/baselines."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from vetting_core.model import Measurement, Severity, ThresholdRule
from vetting_core.records import OperatorSpec
from vetting_core.thresholds import BUILTIN_OPERATORS, ThresholdEngine, ThresholdError

OPS = {op.name: op for op in BUILTIN_OPERATORS}
TS = datetime(2026, 11, 23, tzinfo=UTC)
NAN, INF = math.nan, math.inf


def m(value=None, *, stage="CPUStress", kind="temp", key="cpu/package0", text=None):
    return Measurement(ts=TS, stage=stage, kind=kind, key=key, value=value, text=text)


def judge(op, threshold, values, *, nominal=0.0, texts=None, operators=OPS):
    """Judge each value through the engine (vector path) AND the scalar ``check``;
    they must agree. Returns the engine's verdicts."""
    rule = ThresholdRule(kind="temp", op=op, threshold=threshold, nominal=nominal)
    engine = ThresholdEngine([rule], operators)
    texts = texts or [None] * len(values)
    samples = [m(v, text=t) for v, t in zip(values, texts)]
    res = engine.evaluate(samples)
    verdicts = [e.passed for e in sorted(res.evaluations, key=lambda e: e.sample)]
    assert len(verdicts) == len(values)
    assert [b.sample for b in res.breaches] == [i for i, ok in enumerate(verdicts) if not ok]
    spec = operators[op]
    if not spec.baseline:
        from vetting_core.thresholds import compile_rule

        t = compile_rule(rule, operators)
        observed = [tx if (spec.textual and tx is not None) else v for v, tx in zip(values, texts)]
        assert [bool(spec.check(o, t, nominal)) for o in observed] == verdicts
    return verdicts


@pytest.mark.parametrize(
    ("op", "below", "equal", "above"),
    [("lt", True, False, False), ("lte", True, True, False),
     ("gt", False, False, True), ("gte", False, True, True)],
)
def test_comparisons_at_the_boundary(op, below, equal, above):
    assert judge(op, 85.0, [84.999, 85.0, 85.001]) == [below, equal, above]
    assert judge(op, 0.0, [-0.0, 0.0]) == [equal, equal]


@pytest.mark.parametrize("op", ["lt", "lte", "gt", "gte", "within_pct", "delta_lte"])
def test_nan_and_missing_are_breaches(op):
    assert judge(op, 85.0, [NAN, None], nominal=80.0) == [False, False]


@pytest.mark.parametrize(
    ("op", "expected"),
    [("lt", [True, False]), ("lte", [True, False]), ("gt", [False, True]), ("gte", [False, True])],
)
def test_infinities_compare_as_ieee_says(op, expected):
    assert judge(op, 85.0, [-INF, INF]) == expected
    assert judge(op, INF, [INF])[0] == (op in ("lte", "gte"))


def test_within_pct_edges():
    # 10 % of 25.0 = 2.5: 22.5 and 27.5 are exactly on the edge (exact in binary)
    assert judge("within_pct", 10.0, [22.5, 27.5, 22.4999, 27.5001, 25.0], nominal=25.0) == [
        True, True, False, False, True,
    ]
    # negative nominal uses |nominal|
    assert judge("within_pct", 10.0, [-22.5, -27.5, -28.0], nominal=-25.0) == [True, True, False]
    # nominal 0: only exactly 0 passes, whatever the tolerance
    assert judge("within_pct", 50.0, [0.0, -0.0, 1e-300, -1e-300], nominal=0.0) == [True, True, False, False]
    # tolerance 0: exact match only
    assert judge("within_pct", 0.0, [3200.0, 3200.0001], nominal=3200.0) == [True, False]
    assert judge("within_pct", 10.0, [INF, -INF], nominal=25.0) == [False, False]


def test_within_pct_rejects_negative_tolerance():
    with pytest.raises(ThresholdError, match="tolerance must be ≥ 0"):
        ThresholdEngine([ThresholdRule(kind="t", op="within_pct", threshold=-5.0, nominal=1.0)], OPS)


def test_eq_ne_on_numbers():
    assert judge("eq", 4.0, [4.0, 4.0000001, NAN, None, INF]) == [True, False, False, False, False]
    assert judge("ne", 0.0, [0.0, -0.0, 1.0, NAN, None]) == [False, False, True, False, False]
    assert judge("eq", INF, [INF, -INF]) == [True, False]


def test_eq_ne_on_text_samples():
    texts = ["up", "down", "UP", None]
    assert judge("eq", "up", [None, None, None, None], texts=texts) == [True, False, False, False]
    assert judge("ne", "down", [None, None, None, None], texts=texts) == [True, False, True, False]
    # a numeric sample compared with a text threshold uses its text form
    assert judge("eq", "3.0", [3.0, 3.5]) == [True, False]
    # a text sample compared with a numeric threshold is parsed, or a breach
    assert judge("eq", 2.0, [None, None, None], texts=["2", "2.0", "two"]) == [True, True, False]


def test_regex():
    texts = ["2.19.1", "2.19", "v2.19.1", None]
    assert judge("regex", r"^\d+\.\d+\.\d+$", [None] * 4, texts=texts) == [True, False, False, False]
    # search, not match; numeric samples judged on their text form
    assert judge("regex", r"19", [None, None, 19.0], texts=["2.19.1", "x", None]) == [True, False, True]


@pytest.mark.parametrize("pattern", ["(unclosed", "*", "a{2,1}", "[z-a]"])
def test_invalid_regex_is_a_threshold_error(pattern):
    with pytest.raises(ThresholdError, match="invalid regex"):
        ThresholdEngine([ThresholdRule(kind="fw", op="regex", threshold=pattern)], OPS)


def test_numeric_operator_with_text_threshold():
    e = ThresholdEngine([ThresholdRule(kind="temp", op="lte", threshold="85.5")], OPS)
    assert [x.passed for x in e.evaluate([m(85.5), m(85.6)]).evaluations] == [True, False]
    with pytest.raises(ThresholdError, match="rule 0 .*'lte' needs a number, got 'hot'"):
        ThresholdEngine([ThresholdRule(kind="temp", op="lte", threshold="hot")], OPS)
    with pytest.raises(ThresholdError, match="NaN threshold"):
        ThresholdEngine([ThresholdRule(kind="temp", op="lte", threshold=NAN)], OPS)


def test_unknown_operator():
    with pytest.raises(ThresholdError, match=r"unknown threshold operator 'approx' \(installed: .*delta_lte"):
        ThresholdEngine([ThresholdRule(kind="temp", op="approx", threshold=1.0)], OPS)


def test_delta_lte_baseline_per_series_and_reset():
    rule = ThresholdRule(stage="SMART", kind="counter", key="*/reallocated", op="delta_lte", threshold=2.0)
    e = ThresholdEngine([rule], OPS)

    def c(key, v, stage="SMART"):
        return m(v, stage=stage, kind="counter", key=key)

    res = e.evaluate([c("sda/reallocated", 10.0), c("sdb/reallocated", 100.0), c("sda/reallocated", 12.0)])
    assert [(x.sample, x.observed, x.passed) for x in sorted(res.evaluations, key=lambda x: x.sample)] == [
        (0, 0.0, True), (1, 0.0, True), (2, 2.0, True),
    ]
    # the baseline survives across batches: 13 - 10 = 3 > 2
    res = e.evaluate([c("sda/reallocated", 13.0), c("sdb/reallocated", 101.0)])
    assert [(x.observed, x.passed) for x in sorted(res.evaluations, key=lambda x: x.sample)] == [
        (3.0, False), (1.0, True),
    ]
    assert [b.sample for b in res.breaches] == [0]
    # a retried stage starts a new baseline; another stage's is kept
    e.reset_baselines("SMART")
    res = e.evaluate([c("sda/reallocated", 13.0)])
    assert res.evaluations[0].observed == 0.0 and res.evaluations[0].passed


def test_delta_baseline_is_first_numeric_value():
    rule = ThresholdRule(kind="counter", op="delta_lte", threshold=0.0)
    e = ThresholdEngine([rule], OPS)
    res = e.evaluate([m(None, kind="counter"), m(NAN, kind="counter"), m(5.0, kind="counter"),
                      m(5.0, kind="counter"), m(6.0, kind="counter")])
    got = [(x.passed, x.observed) for x in res.evaluations]
    assert [p for p, _ in got] == [False, False, True, True, False]
    assert got[4][1] == 1.0


def test_stage_and_key_globs_and_kind_index():
    rules = [
        ThresholdRule(stage="*", kind="temp", key="cpu/*", op="lte", threshold=90.0),
        ThresholdRule(stage="GPU", kind="temp", key="gpu?/core", op="lte", threshold=85.0),
        ThresholdRule(stage="CPU*", kind="temp", key="cpu/package[01]", op="lte", threshold=80.0,
                      severity=Severity.warning),
        ThresholdRule(stage="*", kind="power", key="*", op="lte", threshold=10.0),
    ]
    e = ThresholdEngine(rules, OPS)
    samples = [
        m(85.0, stage="CPUStress", key="cpu/package0"),   # rules 0, 2 (breach 2)
        m(85.0, stage="CPUStress", key="cpu/package2"),   # rule 0
        m(86.0, stage="GPU", key="gpu0/core"),            # rule 1 (breach)
        m(86.0, stage="GPU", key="gpu10/core"),           # "?" is one character: none
        m(86.0, stage="Burn", key="gpu0/core"),           # stage mismatch: none
        m(5.0, stage="CPUStress", kind="fan", key="cpu/package0"),  # unjudged kind: none
        m(95.0, stage="cpustress", key="cpu/package0"),   # globs are case-sensitive: rule 0 only
    ]
    res = e.evaluate(samples)
    pairs = sorted((x.sample, x.rule, x.passed) for x in res.evaluations)
    assert pairs == [(0, 0, True), (0, 2, False), (1, 0, True), (2, 1, False), (6, 0, False)]
    assert sorted((b.sample, b.rule) for b in res.breaches) == [(0, 2), (2, 1), (6, 0)]
    assert sorted((b.sample, b.rule) for b in e.critical(res.breaches)) == [(2, 1), (6, 0)]
    assert e.rules_for("CPUStress", "temp", "cpu/package1") == e.rules_for("CPUStress", "temp", "cpu/package1")
    assert [c.index for c in e.rules_for("CPUStress", "temp", "cpu/package1")] == [0, 2]


def test_empty_batch_and_no_rules():
    assert ThresholdEngine([], OPS).evaluate([m(1.0)]) == ([], [], [])
    assert ThresholdEngine([ThresholdRule(kind="temp", op="lt", threshold=1.0)], OPS).evaluate([]) == ([], [], [])


def test_chunks_hold_the_same_judgements_per_series_and_rule():
    e = ThresholdEngine([ThresholdRule(kind="temp", op="lt", threshold=80.0)], OPS)
    batch = [m(70.0), m(90.0), m(75.0)]
    full, lean = e.evaluate(batch), e.evaluate(batch, per_sample=False)
    assert lean.evaluations == [] and lean.breaches == full.breaches == [(0, 1, 90.0, False)]
    (chunk,) = lean.chunks
    assert chunk.rule == 0 and chunk.samples == [0, 1, 2]
    assert chunk.observed == [70.0, 90.0, 75.0] and chunk.passed == [True, False, True]
    assert [(x.sample, x.passed) for x in full.evaluations] == list(zip(chunk.samples, chunk.passed))


def test_text_only_sample_with_numeric_operator_is_a_breach():
    assert judge("lte", 85.0, [None, 80.0], texts=["n/a", None]) == [False, True]


def test_plugin_operator_without_vector():
    calls = []

    def multiple_of(observed, threshold, nominal):
        calls.append(observed)
        return observed is not None and observed % threshold == 0

    ops = {**OPS, "multiple_of": OperatorSpec(name="multiple_of", check=multiple_of)}
    assert judge("multiple_of", 4.0, [8.0, 6.0, None], operators=ops) == [True, False, False]
    assert calls[:3] == [8.0, 6.0, None]


def test_plugin_operator_with_structured_threshold():
    def parse(raw):
        lo, hi = (float(x) for x in str(raw).split(".."))
        if lo > hi:
            raise ValueError("empty range")
        return (lo, hi)

    between = OperatorSpec(name="between", check=lambda o, t, n: o is not None and t[0] <= o <= t[1],
                           parse_threshold=parse)
    ops = {**OPS, "between": between}
    assert judge("between", "10..20", [10.0, 20.0, 20.5], operators=ops) == [True, True, False]
    with pytest.raises(ThresholdError, match="invalid threshold '20..10': empty range"):
        ThresholdEngine([ThresholdRule(kind="temp", op="between", threshold="20..10")], ops)


def test_many_series_in_one_batch_keep_sample_indices():
    rule = ThresholdRule(kind="temp", key="*", op="lt", threshold=50.0)
    e = ThresholdEngine([rule], OPS)
    samples = [m(float(i), key=f"s{i % 7}") for i in range(100)]
    res = e.evaluate(samples)
    assert sorted(x.sample for x in res.evaluations) == list(range(100))
    for x in res.evaluations:
        assert x.observed == float(x.sample) and x.passed == (x.sample < 50)
    assert sorted(b.sample for b in res.breaches) == list(range(50, 100))


def test_plugin_operator_that_raises_judges_sample_by_sample():
    def modulo(observed, threshold, nominal):
        return observed % threshold == 0  # TypeError on a missing value

    ops = {**OPS, "multiple_of": OperatorSpec(name="multiple_of", check=modulo)}
    e = ThresholdEngine([ThresholdRule(kind="temp", op="multiple_of", threshold=4.0)], ops)
    res = e.evaluate([m(8.0), m(None), m(6.0), m(12.0)])
    assert [x.passed for x in sorted(res.evaluations, key=lambda x: x.sample)] == [True, False, False, True]
    assert sorted(b.sample for b in res.breaches) == [1, 2]


def test_plugin_vector_returning_the_wrong_length_falls_back_to_check():
    bad = OperatorSpec(name="pos", check=lambda o, t, n: o is not None and o > t,
                       vector=lambda vs, t, n: [True])  # one verdict for any batch: a bug
    e = ThresholdEngine([ThresholdRule(kind="temp", op="pos", threshold=0.0)], {**OPS, "pos": bad})
    res = e.evaluate([m(1.0), m(-1.0), m(2.0)])
    assert [x.passed for x in sorted(res.evaluations, key=lambda x: x.sample)] == [True, False, True]
