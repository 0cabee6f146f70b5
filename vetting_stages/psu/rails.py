"""Voltage rails: which nominal a sensor label means, and the within-percent judgement.

Labels differ by board and BMC ("+12V", "12V", "P12V", "PSU1 12V Out", "5VSB",
"3VSB", "VBAT", "-12V"). A label names a rail when it contains the voltage as a
number with a V; ambiguous labels (Vcore, DIMM, VTT: voltages set by the board, not
the PSU) are not rails and are not judged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# (rail name, nominal volts, default tolerance %) — ATX/SSI rails (ATX spec: ±5 % on
# +12/+5/+3.3/5VSB, ±10 % on -12 V); the CMOS battery is judged as a floor instead.
_RAILS: tuple[tuple[str, re.Pattern[str], float, float], ...] = (
    ("-12V", re.compile(r"(^|[^\d.+])-\s?12\s?V", re.I), -12.0, 10.0),
    ("5VSB", re.compile(r"(5\s?V\s?SB|5VSB|VSB5|STBY5|5V_?STBY|5V\s?standby)", re.I), 5.0, 5.0),
    ("3VSB", re.compile(r"(3(\.3)?\s?V\s?SB|3VSB|VSB3|3\.3V_?STBY|3V3_?SB|AVSB)", re.I), 3.3, 5.0),
    ("VBAT", re.compile(r"(V\s?BAT|VBATT|CMOS\s?bat|battery)", re.I), 3.0, 0.0),
    ("+12V", re.compile(r"(^|[^\d.])\+?\s?P?12\s?V(?!SB)", re.I), 12.0, 5.0),
    ("+5V", re.compile(r"(^|[^\d.])\+?\s?P?5\s?V(?!SB)", re.I), 5.0, 5.0),
    ("+3.3V", re.compile(r"(^|[^\d])\+?\s?P?3(\.|V|_)3\s?V?(?!SB)|3VCC|3V3", re.I), 3.3, 5.0),
)

VBAT_MIN = 2.8  # a CMOS battery below this is due for replacement


@dataclass(frozen=True)
class Rail:
    rail: str
    nominal: float
    tolerance_pct: float


def classify(label: str) -> Rail | None:
    for name, pattern, nominal, tol in _RAILS:
        if pattern.search(label):
            return Rail(name, nominal, tol)
    return None


@dataclass
class RailReading:
    source: str  # ipmi / sensors / hwmon
    sensor: str  # label as the source names it
    volts: float
    rail: Rail

    @property
    def key(self) -> str:
        return f"{self.rail.rail}/{self.source}:{self.sensor}"

    def problem(self, tolerance_pct: float | None = None) -> str | None:
        r = self.rail
        if r.rail == "VBAT":
            return None if self.volts >= VBAT_MIN else f"{self.sensor} {self.volts:.2f} V below {VBAT_MIN} V"
        tol = r.tolerance_pct if tolerance_pct is None else tolerance_pct
        if abs(self.volts - r.nominal) <= abs(r.nominal) * tol / 100.0:
            return None
        dev = 100.0 * (self.volts - r.nominal) / abs(r.nominal)
        return f"{self.sensor} {self.volts:.2f} V is {dev:+.1f}% off {r.rail} (±{tol:g}%)"
