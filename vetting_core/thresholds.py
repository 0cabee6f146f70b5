"""The threshold engine: judge samples against a run's rules.

Rules are ``(stage glob, kind, key glob, op, threshold, nominal, unit, severity,
source)``. The engine compiles them into an index by ``kind`` and caches, per series
``(stage, kind, key)``, which rules apply — so a batch costs one dict lookup per
sample plus one vectorised comparison per (series, rule).

Semantics shared by every numeric operator: a missing value or NaN is always a
breach (a sensor printing garbage is a finding); ±inf compares as IEEE says.
Counter-delta operators (``baseline=True``) judge ``value - first value of the series
within the stage``; the engine keeps that baseline per series for its lifetime (one
engine per run; :meth:`ThresholdEngine.reset_baselines` forgets a retried stage's).
The baseline is the first *numeric* value: a counter that could not be read at first
has no delta yet, and its unreadable samples are breaches like any missing value.
"""

from __future__ import annotations

import gc
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from fnmatch import fnmatchcase
from itertools import repeat
from operator import attrgetter
from typing import Any, NamedTuple, TypeVar

import structlog

from .model import Measurement, Severity, ThresholdRule, Verdict
from .records import OperatorSpec


log = structlog.get_logger()


class ThresholdError(ValueError):
    pass


def _num(v: Any) -> float:
    """Numeric view of an observed value: None/non-numbers become NaN."""
    if v is None:
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _lt(o, t, n):
    return _num(o) < t


def _lte(o, t, n):
    return _num(o) <= t


def _gt(o, t, n):
    return _num(o) > t


def _gte(o, t, n):
    return _num(o) >= t


def _within_pct(o, t, n):
    return abs(_num(o) - n) <= abs(n) * t / 100.0


def _eq(o, t, n):
    if isinstance(t, str):
        return o is not None and str(o) == t
    return _num(o) == t


def _ne(o, t, n):
    if isinstance(t, str):
        return o is not None and str(o) != t
    v = _num(o)
    return v == v and v != t  # NaN is a breach here too


def _regex(o, t, n):
    return o is not None and re.search(t, str(o)) is not None


def _delta_lte(o, t, n):
    return _num(o) <= t


# NaN comparisons are False in IEEE arithmetic, which is the breach we want.
def _lt_v(vs, t, n):
    return [v < t for v in vs]


def _lte_v(vs, t, n):
    return [v <= t for v in vs]


def _gt_v(vs, t, n):
    return [v > t for v in vs]


def _gte_v(vs, t, n):
    return [v >= t for v in vs]


def _within_pct_v(vs, t, n):
    tol = abs(n) * t / 100.0
    return [abs(v - n) <= tol for v in vs]


def _delta_lte_v(vs, t, n):
    return [v <= t for v in vs]


def _eq_v(vs, t, n):
    if isinstance(t, str):
        # text samples are str already; anything else goes through the scalar rule
        return [o == t if o.__class__ is str else _eq(o, t, n) for o in vs]
    return [_eq(o, t, n) for o in vs]


def _ne_v(vs, t, n):
    if isinstance(t, str):
        return [o != t if o.__class__ is str else _ne(o, t, n) for o in vs]
    return [_ne(o, t, n) for o in vs]


def _regex_v(vs, t, n):
    search = (t if isinstance(t, re.Pattern) else re.compile(t)).search
    return [o is not None and search(o if o.__class__ is str else str(o)) is not None for o in vs]


def _vector(fast, scalar):
    def vector(values: list[Any], t: float, n: float) -> list[bool]:
        try:
            return fast(values, t, n)
        except TypeError:  # a None (text-only sample) slipped in
            return [scalar(v, t, n) for v in values]

    return vector


BUILTIN_OPERATORS: tuple[OperatorSpec, ...] = (
    OperatorSpec(name="lt", check=_lt, vector=_vector(_lt_v, _lt), description="observed < threshold"),
    OperatorSpec(name="lte", check=_lte, vector=_vector(_lte_v, _lte), description="observed ≤ threshold"),
    OperatorSpec(name="gt", check=_gt, vector=_vector(_gt_v, _gt), description="observed > threshold"),
    OperatorSpec(name="gte", check=_gte, vector=_vector(_gte_v, _gte), description="observed ≥ threshold"),
    OperatorSpec(
        name="within_pct",
        check=_within_pct,
        vector=_vector(_within_pct_v, _within_pct),
        description="|observed − nominal| ≤ |nominal| × threshold / 100",
    ),
    OperatorSpec(name="eq", check=_eq, vector=_eq_v, textual=True, description="observed equals threshold (number or text)"),
    OperatorSpec(name="ne", check=_ne, vector=_ne_v, textual=True, description="observed differs from threshold"),
    OperatorSpec(name="regex", check=_regex, vector=_regex_v, textual=True, description="threshold regex matches the text"),
    OperatorSpec(
        name="delta_lte",
        check=_delta_lte,
        vector=_vector(_delta_lte_v, _delta_lte),
        baseline=True,
        description="value − first value of the series in the stage ≤ threshold (counter delta)",
    ),
)


class Evaluation(NamedTuple):
    rule: int  # index into ThresholdEngine.rules
    sample: int  # index into the evaluated batch
    observed: Any
    passed: bool


class Chunk(NamedTuple):
    """One (series, rule) pair of a batch, whole: the indices of the series' samples in
    the batch, what the rule observed for each (value, counter delta or text) and its
    verdicts. Aggregates (counts, min/max) are computed from these lists at C speed."""

    rule: int  # index into ThresholdEngine.rules
    series: tuple[str, str, str]  # (stage, kind, key)
    samples: list[int]
    observed: list[Any]
    passed: list[bool]


class EvaluationResult(NamedTuple):
    evaluations: list[Evaluation]  # empty when evaluate(..., per_sample=False)
    breaches: list[Evaluation]
    chunks: list[Chunk]


_series_key = attrgetter("stage", "kind", "key")
_value = attrgetter("value")
_text_value = attrgetter("text", "value")
_new_tuple = tuple.__new__


class _Compiled(NamedTuple):
    index: int
    rule: ThresholdRule
    op: OperatorSpec
    threshold: Any


def compile_rule(rule: ThresholdRule, operators: Mapping[str, OperatorSpec]) -> Any:
    """Validate a rule against the installed operators; return its threshold in the
    form the operator expects. Raises :class:`ThresholdError` naming the problem."""
    op = operators.get(rule.op)
    if op is None:
        raise ThresholdError(
            f"unknown threshold operator {rule.op!r} (installed: {', '.join(sorted(operators))})"
        )
    if op.parse_threshold is not None:
        # operators with a structured threshold (a range, a list) validate it here,
        # so a bad rule is rejected when the run is planned, not while judging
        try:
            return op.parse_threshold(rule.threshold)
        except (TypeError, ValueError) as exc:
            raise ThresholdError(
                f"operator {rule.op!r}: invalid threshold {rule.threshold!r}: {exc}"
            ) from None
    if op.name == "regex":
        try:
            return re.compile(str(rule.threshold))
        except re.error as exc:
            raise ThresholdError(f"invalid regex {rule.threshold!r}: {exc}") from None
    threshold = rule.threshold
    if isinstance(threshold, str) and not op.textual:
        try:
            threshold = float(threshold)
        except ValueError:
            raise ThresholdError(
                f"operator {rule.op!r} needs a number, got {rule.threshold!r}"
            ) from None
    if isinstance(threshold, float) and threshold != threshold:
        raise ThresholdError(f"operator {rule.op!r}: a NaN threshold would judge nothing")
    if op.name == "within_pct" and threshold < 0:
        raise ThresholdError(f"within_pct tolerance must be ≥ 0 %, got {threshold!r}")
    return threshold


def _one_by_one(op: OperatorSpec, observed: list[Any], t: Any, n: float, exc: Exception) -> list[bool]:
    """A plugin operator raised on this batch: judge sample by sample, and count a
    sample its ``check`` cannot judge as a breach (never lose the whole batch)."""
    log.warning("threshold.operator_failed", op=op.name, error=f"{type(exc).__name__}: {exc}")
    flags: list[bool] = []
    for v in observed:
        try:
            flags.append(bool(op.check(v, t, n)))
        except Exception:
            flags.append(False)
    return flags


class ThresholdEngine:
    """Judges samples for one run. Not thread-safe; one per run."""

    def __init__(self, rules: Sequence[ThresholdRule], operators: Mapping[str, OperatorSpec]) -> None:
        self.rules = list(rules)
        self._by_kind: dict[str, list[_Compiled]] = {}
        for i, rule in enumerate(self.rules):
            try:
                threshold = compile_rule(rule, operators)
            except ThresholdError as exc:
                raise ThresholdError(
                    f"threshold rule {i} (stage={rule.stage!r} kind={rule.kind!r} "
                    f"key={rule.key!r} op={rule.op!r}, source {rule.source}): {exc}"
                ) from None
            self._by_kind.setdefault(rule.kind, []).append(
                _Compiled(i, rule, operators[rule.op], threshold)
            )
        self._series: dict[tuple[str, str, str], tuple[_Compiled, ...]] = {}
        self._baselines: dict[tuple[str, str, str], float] = {}

    def rules_for(self, stage: str, kind: str, key: str) -> tuple[_Compiled, ...]:
        series = (stage, kind, key)
        hit = self._series.get(series)
        if hit is None:
            hit = tuple(
                c
                for c in self._by_kind.get(kind, ())
                if fnmatchcase(stage, c.rule.stage) and fnmatchcase(key, c.rule.key)
            )
            self._series[series] = hit
        return hit

    def reset_baselines(self, stage: str) -> None:
        """Forget counter baselines of one stage (when it is retried)."""
        for series in [s for s in self._baselines if s[0] == stage]:
            del self._baselines[series]

    def evaluate(self, samples: Sequence[Measurement], *, per_sample: bool = True) -> EvaluationResult:
        """Judge a batch. Returns every (rule, sample) evaluation, the breaches, and the
        same judgements as one :class:`Chunk` per (series, rule).

        ``per_sample=False`` leaves ``evaluations`` empty: the server's sensor path
        needs only breaches and per-chunk tallies, and building a tuple per judgement
        was a fifth of its judging time.

        Hot path (every sensor batch goes through it): samples are grouped by series
        with C-level iteration, each (series, rule) pair is judged with the operator's
        vector function, and ``Evaluation`` tuples are built without a Python-level
        constructor call. Order: grouped by series (first appearance in the batch),
        then rule index, then sample order.
        """
        # Every Evaluation is a GC-tracked tuple subclass: with the collector running, a
        # batch of thousands of them triggers collections that traverse the whole heap
        # (measured: 3-8x slower). They form no cycles, so the collector is paused for
        # the duration of the call and restored after.
        paused = gc.isenabled()
        if paused:
            gc.disable()
        try:
            return self._evaluate(samples, per_sample)
        finally:
            if paused:
                gc.enable()

    def _evaluate(self, samples: Sequence[Measurement], per_sample: bool) -> EvaluationResult:
        groups: defaultdict[tuple[str, str, str], list[int]] = defaultdict(list)
        for i, series in enumerate(map(_series_key, samples)):
            groups[series].append(i)
        by_kind = self._by_kind
        evaluations: list[Evaluation] = []
        breaches: list[Evaluation] = []
        chunks: list[Chunk] = []
        getitem = samples.__getitem__
        for series, idx in groups.items():
            if series[1] not in by_kind:
                continue
            compiled = self._series.get(series)
            if compiled is None:
                compiled = self.rules_for(*series)
            if not compiled:
                continue
            values = list(map(_value, map(getitem, idx)))
            m = len(idx)
            texts: list[Any] | None = None
            deltas: list[float] | None = None
            for c in compiled:
                op = c.op
                if op.textual:
                    if texts is None:
                        texts = [
                            t if t is not None else v
                            for t, v in map(_text_value, map(getitem, idx))
                        ]
                    observed = texts
                elif op.baseline:
                    if deltas is None:
                        deltas = self._deltas(series, values)
                    observed = deltas
                else:
                    observed = values
                t, n = c.threshold, c.rule.nominal
                try:
                    if op.vector is not None:
                        flags = op.vector(observed, t, n)
                        if len(flags) != m:
                            raise ThresholdError(
                                f"vector() returned {len(flags)} verdicts for {m} samples"
                            )
                    else:
                        check = op.check
                        flags = [bool(check(v, t, n)) for v in observed]
                except Exception as exc:
                    flags = _one_by_one(op, observed, t, n, exc)
                ri = c.index
                chunks.append(Chunk(ri, series, idx, observed, flags))
                if per_sample:
                    evaluations.extend(
                        map(_new_tuple, repeat(Evaluation, m), zip(repeat(ri, m), idx, observed, flags))
                    )
                if not all(flags):
                    breaches.extend(
                        Evaluation(ri, si, ob, False)
                        for si, ob, ok in zip(idx, observed, flags)
                        if not ok
                    )
        return EvaluationResult(evaluations, breaches, chunks)

    def _deltas(self, series: tuple[str, str, str], values: list[Any]) -> list[float]:
        """``value - baseline`` for a counter series. The baseline is the first numeric
        (non-NaN) value seen for the series; samples before it (missing, garbage) have
        no delta and judge as NaN, i.e. a breach."""
        base = self._baselines.get(series)
        nums = [_num(v) for v in values]
        if base is None:
            for v in nums:
                if v == v:
                    base = self._baselines[series] = v
                    break
            else:
                return [math.nan] * len(nums)
            out: list[float] = []
            seen = False
            for v in nums:
                seen = seen or v == v
                out.append(v - base if seen else math.nan)
            return out
        return [v - base for v in nums]

    def critical(self, breaches: Iterable[Evaluation]) -> list[Evaluation]:
        return [b for b in breaches if self.rules[b.rule].severity is Severity.critical]


class StageJudgement(NamedTuple):
    """A stage's verdict and reason once the thresholds have had their say."""

    verdict: Verdict
    reason: str | None


_B = TypeVar("_B")


def judge_stage(
    verdict: Verdict,
    reason: str | None,
    critical: Sequence[_B],
    why: Callable[[Sequence[_B]], str] | None = None,
) -> StageJudgement:
    """The one rule that joins a plugin's verdict and the thresholds: **a critical
    threshold breach turns a passed stage into a failed one**.

    A plugin judges what it can see (an exit code, a parsed verdict); the run's rules
    judge the numbers it measured, including rules the plugin never heard of (a host's
    spec, a profile fragment). A critical breach overrides only ``passed``: a stage that
    failed, could not run, was skipped or asked for a hold keeps its own verdict and
    reason, so the first cause stays the one reported. Warnings never change a verdict.

    ``critical`` holds the critical breaches in whatever shape the caller judged them
    (:class:`Evaluation` from :meth:`ThresholdEngine.critical`, the test kit's
    judgements, the server's stored rows); ``why`` turns them into the failed stage's
    reason, because each caller names the offending sample with what it has at hand.
    Used by the server (an agent's stage result), local mode and the plugin test kit
    (:mod:`vetting_core.testing`), so the three cannot disagree on a verdict.
    """
    if verdict is Verdict.passed and critical:
        return StageJudgement(Verdict.failed, why(critical) if why is not None else "critical threshold breach")
    return StageJudgement(verdict, reason)
