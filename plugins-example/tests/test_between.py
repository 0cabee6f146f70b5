"""The `between` operator, through Vetting's real threshold engine."""

import math
from datetime import UTC, datetime

import pytest
from vetting_core import Measurement, ThresholdRule
from vetting_core.thresholds import ThresholdEngine, ThresholdError

from vetting_example import plugin
from vetting_example.operators import between, parse_range


@pytest.fixture
def operators(vetting_registry):
    return vetting_registry(plugin).operators


def sample(value, key="coverage_pct", text=None):
    return Measurement(ts=datetime.now(UTC), stage="Memtester", kind="memtester", key=key, value=value, text=text)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("99..100", (99.0, 100.0)),
        (" 1.5 .. 2 ", (1.5, 2.0)),
        ("-5,5", (-5.0, 5.0)),
        ("-inf..85", (-math.inf, 85.0)),
        ([10, 20], (10.0, 20.0)),
        ("7..7", (7.0, 7.0)),
    ],
)
def test_parse_range(raw, expected):
    assert parse_range(raw) == expected


@pytest.mark.parametrize(
    "raw, words",
    [
        ("100..99", "lower bound 100 is above upper bound 99"),
        ("5", 'expected "lo..hi"'),
        ("a..b", "must be numbers"),
        ("1..2..3", 'expected "lo..hi"'),
        ("nan..1", "NaN"),
        (42.0, 'expected "lo..hi"'),
        ([1], 'expected "lo..hi"'),
    ],
)
def test_bad_ranges_are_rejected_when_the_rule_is_compiled(operators, raw, words):
    with pytest.raises(ValueError, match=words):
        parse_range(raw)
    rule = ThresholdRule(kind="memtester", key="coverage_pct", op="between", threshold=raw)
    with pytest.raises(ThresholdError, match="operator 'between': invalid threshold"):
        ThresholdEngine([rule], operators)


def test_boundaries_inclusive_nan_and_missing_breach(operators):
    rule = ThresholdRule(kind="memtester", key="coverage_pct", op="between", threshold="99..100")
    engine = ThresholdEngine([rule], operators)
    values = [99.0, 100.0, 99.5, 98.999, 100.001, math.nan, None, math.inf, -math.inf]
    result = engine.evaluate([sample(v) for v in values])
    assert [e.passed for e in result.evaluations] == [True, True, True, False, False, False, False, False, False]
    assert len(result.breaches) == 6


def test_open_ended_range(operators):
    rule = ThresholdRule(kind="temp", key="*", op="between", threshold="-inf..85")
    engine = ThresholdEngine([rule], operators)
    s = [Measurement(ts=datetime.now(UTC), stage="Burn", kind="temp", key="cpu0", value=v) for v in (-40, 85, 85.1)]
    assert [e.passed for e in engine.evaluate(s).evaluations] == [True, True, False]


def test_scalar_check_accepts_the_raw_text_too():
    # an engine without parse_threshold support would hand the raw string over
    assert between(5, "1..10", 0.0) is True
    assert between("garbage", (1.0, 10.0), 0.0) is False
