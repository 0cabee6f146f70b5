"""``ipmitool sdr elist full`` / ``sdr type "Power Supply"``: argv and pure parsers.

Line format (ipmitool 1.8.19, captured against ipmi_sim here)::

    PS2 Status       | 02h | ok  | 10.1 | Presence detected, Failure detected
    PS Redundancy    | 03h | ok  | 10.1 | Redundancy Lost
    12V              | 04h | ok  | 10.1 | 12.06 Volts

The status column says whether the *reading* is valid (``ok``, ``ns`` no reading,
``cr``/``nr`` critical/non-recoverable threshold); the last column carries the
discrete states, which is where a failed PSU shows. Both are judged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_UNIT = re.compile(r"^(?P<value>-?\d+(?:\.\d+)?)\s+(?P<unit>.+)$")

# Discrete Power Supply / redundancy states that mean trouble (IPMI 2.0 table 42-3).
BAD_STATES = (
    "failure detected",
    "predictive failure",
    "power supply ac lost",
    "ac lost",
    "input lost",
    "out-of-range",
    "config error",
    "configuration error",
    "redundancy lost",
    "redundancy degraded",
    "non-redundant",
    "insufficient resources",
)
BAD_STATUS = {"cr": "critical", "nr": "non-recoverable", "lnr": "non-recoverable", "unr": "non-recoverable",
              "lcr": "critical", "ucr": "critical"}


def sdr_argv(what: str = "elist", *, interface: dict | None = None) -> list[str]:
    """``ipmitool [-I lanplus -H … -U … -P …] sdr elist full`` or ``sdr type "Power Supply"``."""
    argv = ["ipmitool"]
    if interface:
        argv += ["-I", str(interface.get("interface", "lanplus"))]
        if interface.get("cipher") is not None:
            argv += ["-C", str(interface["cipher"])]
        argv += ["-H", str(interface["host"])]
        if interface.get("port"):
            argv += ["-p", str(interface["port"])]
        argv += ["-U", str(interface.get("user", "")), "-P", str(interface.get("password", ""))]
        if interface.get("timeout") is not None:  # per-request LAN timeout, seconds
            argv += ["-N", str(int(interface["timeout"]))]
        if interface.get("retries") is not None:
            argv += ["-R", str(int(interface["retries"]))]
    if what == "power_supply":
        argv += ["sdr", "type", "Power Supply"]
    else:
        argv += ["sdr", "elist", "full"]
    return argv


@dataclass
class SdrRecord:
    name: str
    sensor_id: str
    status: str
    entity: str
    reading: str
    value: float | None = None
    unit: str | None = None
    states: list[str] = field(default_factory=list)

    @property
    def is_psu(self) -> bool:
        n = self.name.lower()
        return (
            self.entity.startswith("10.")  # entity 10 = power supply
            or any(s in n for s in ("ps", "psu", "power supply", "pws", "redundan"))
        ) and self.value is None

    def problems(self) -> list[str]:
        out = []
        if self.status in BAD_STATUS:
            out.append(f"{self.name}: {BAD_STATUS[self.status]} ({self.reading})")
        for s in self.states:
            low = s.lower()
            if any(b in low for b in BAD_STATES) and "deasserted" not in low:
                out.append(f"{self.name}: {s}")
        return out


def parse_sdr(text: str) -> list[SdrRecord]:
    """Parse ``sdr elist``/``sdr type`` lines (5 ``|``-separated columns)."""
    records = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) != 5 or not parts[0]:
            continue
        name, sid, status, entity, reading = parts
        rec = SdrRecord(name=name, sensor_id=sid, status=status.lower(), entity=entity, reading=reading)
        m = _UNIT.match(reading)
        if m and not reading.lower().startswith("0x"):
            rec.value, rec.unit = float(m["value"]), m["unit"].strip()
        elif reading and reading.lower() not in ("no reading", "disabled", "not readable"):
            rec.states = [s.strip() for s in reading.split(",") if s.strip()]
        records.append(rec)
    return records


def voltage_records(records: list[SdrRecord]) -> list[SdrRecord]:
    return [r for r in records if r.value is not None and (r.unit or "").lower().startswith("volt")]
