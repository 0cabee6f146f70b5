"""Sustained-breach detection over a stream of samples.

A single hot sample is noise; a temperature above its limit for half a minute is a
finding that should stop a soak *while it runs* rather than at the end of a 12-hour
burn. :class:`SustainedBreachDetector` is pure (no clock, no I/O): feed it samples
with their timestamps, it returns a :class:`Breach` the first time a series has
violated a rule for at least ``window_s`` seconds *and* ``min_samples`` consecutive
samples. A passing sample resets the series. A missing or NaN value counts as a
violation, as in the threshold engine (a sensor printing garbage is a finding).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from vetting_core.thresholds import BUILTIN_OPERATORS

_OPS = {op.name: op for op in BUILTIN_OPERATORS if not op.baseline and not op.textual}


@dataclass(frozen=True)
class BreachRule:
    """The *healthy* condition, as in threshold rules: ``value <op> threshold`` must hold.

    E.g. ``BreachRule("temperature", "cpu/*", "lte", 95, window_s=30)``: a CPU zone
    above 95 °C for 30 s is a sustained breach.
    """

    kind: str
    key: str
    op: str
    threshold: float
    window_s: float = 30.0
    min_samples: int = 3
    nominal: float = 0.0
    name: str = ""

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ValueError(f"breach rule operator must be one of {sorted(_OPS)}, not {self.op!r}")
        if self.window_s < 0 or self.min_samples < 1:
            raise ValueError("window_s must be ≥ 0 and min_samples ≥ 1")

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> BreachRule:
        known = {"kind", "key", "op", "threshold", "window_s", "min_samples", "nominal", "name"}
        extra = set(m) - known
        if extra:
            raise ValueError(f"unknown breach rule fields: {sorted(extra)}")
        return cls(
            kind=str(m["kind"]), key=str(m.get("key", "*")), op=str(m["op"]),
            threshold=float(m["threshold"]), window_s=float(m.get("window_s", 30.0)),
            min_samples=int(m.get("min_samples", 3)), nominal=float(m.get("nominal", 0.0)),
            name=str(m.get("name", "")),
        )

    def ok(self, value: Any) -> bool:
        return bool(_OPS[self.op].check(value, self.threshold, self.nominal))

    def describe(self) -> str:
        return self.name or f"{self.kind} {self.key} {self.op} {self.threshold:g}"


@dataclass(frozen=True)
class Breach:
    rule: BreachRule
    kind: str
    key: str
    since: float  # timestamp of the first violating sample of the run
    until: float  # timestamp of the sample that made it sustained
    samples: int
    last_value: Any

    def __str__(self) -> str:
        return (
            f"sustained breach of '{self.rule.describe()}' on {self.kind}/{self.key}: "
            f"{self.samples} consecutive samples over {self.until - self.since:.1f}s, last value {self.last_value!r}"
        )


@dataclass
class _Series:
    since: float | None = None
    count: int = 0
    fired: bool = False


@dataclass
class SustainedBreachDetector:
    rules: list[BreachRule]
    _series: dict[tuple[int, str, str], _Series] = field(default_factory=dict)

    @classmethod
    def from_config(cls, rules: Iterable[BreachRule | Mapping[str, Any]]) -> SustainedBreachDetector:
        return cls([r if isinstance(r, BreachRule) else BreachRule.from_mapping(r) for r in rules])

    def add(self, rule: BreachRule) -> None:
        self.rules.append(rule)

    def feed(self, kind: str, key: str, value: Any, ts: float) -> Breach | None:
        """Judge one sample; return a Breach when one becomes sustained (once per series)."""
        found: Breach | None = None
        for i, rule in enumerate(self.rules):
            if rule.kind != kind or not fnmatchcase(key, rule.key):
                continue
            s = self._series.setdefault((i, kind, key), _Series())
            if rule.ok(value):
                s.since, s.count, s.fired = None, 0, False
                continue
            if s.since is None:
                s.since = ts
            s.count += 1
            if not s.fired and s.count >= rule.min_samples and ts - s.since >= rule.window_s:
                s.fired = True
                found = found or Breach(rule, kind, key, s.since, ts, s.count, value)
        return found

    def open_breaches(self) -> dict[tuple[str, str], int]:
        """Series currently violating (not yet sustained or already fired): for the summary."""
        return {(k[1], k[2]): s.count for k, s in self._series.items() if s.count}
