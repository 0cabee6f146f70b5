"""The ``between`` threshold operator: ``lo <= observed <= hi``.

Built-in operators take one number; a window needs two. The rule's threshold is the
string ``"lo..hi"`` (``ThresholdRule.threshold`` is a number or a string on the wire),
parsed once when the rule is compiled (``OperatorSpec.parse_threshold``) so a typo is
rejected when the run is planned, not while samples are judged. ``-inf``/``inf`` make
one side open. A missing value or NaN is a breach, as for every numeric operator.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

from vetting_core import OperatorSpec


@lru_cache(maxsize=256)
def _parse_text(text: str) -> tuple[float, float]:
    sep = ".." if ".." in text else ","
    parts = text.split(sep)
    if len(parts) != 2:
        raise ValueError('expected "lo..hi" (for example "99..100" or "-inf..85")')
    try:
        lo, hi = (float(p.strip()) for p in parts)
    except ValueError:
        raise ValueError(f'bounds of "lo..hi" must be numbers, got {text!r}') from None
    return _check(lo, hi)


def _check(lo: float, hi: float) -> tuple[float, float]:
    if math.isnan(lo) or math.isnan(hi):
        raise ValueError("bounds must not be NaN")
    if lo > hi:
        raise ValueError(f"lower bound {lo:g} is above upper bound {hi:g}")
    return lo, hi


def parse_range(raw: Any) -> tuple[float, float]:
    """``"lo..hi"``, ``"lo,hi"`` or a two-element list/tuple → ``(lo, hi)``."""
    if isinstance(raw, str):
        return _parse_text(raw.strip())
    if isinstance(raw, (list, tuple)) and len(raw) == 2:
        try:
            return _check(float(raw[0]), float(raw[1]))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"bounds must be numbers: {exc}") from None
    raise ValueError(f'expected "lo..hi", got {raw!r}')


def _num(v: Any) -> float:
    if v is None or isinstance(v, bool):
        return math.nan if v is None else float(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def between(observed: Any, threshold: Any, nominal: float) -> bool:
    lo, hi = threshold if isinstance(threshold, tuple) else parse_range(threshold)
    return lo <= _num(observed) <= hi  # NaN compares False: a breach


def between_vector(values: list[Any], threshold: Any, nominal: float) -> list[bool]:
    lo, hi = threshold if isinstance(threshold, tuple) else parse_range(threshold)
    return [lo <= _num(v) <= hi for v in values]


BETWEEN = OperatorSpec(
    name="between",
    check=between,
    vector=between_vector,
    parse_threshold=parse_range,
    description='lo ≤ observed ≤ hi; threshold "lo..hi" (e.g. "99..100", "-inf..85")',
)
