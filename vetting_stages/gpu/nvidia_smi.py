"""``nvidia-smi --query-gpu … --format=csv`` fallback when pynvml is not installed.

NVML (through pynvml) is the primary source; nvidia-smi is what every driver ships,
so the stage can still inventory and sample GPUs without the Python package. The
CSV form is documented (``nvidia-smi --help-query-gpu``) and stable across drivers,
unlike the human-readable ``-q`` output.

The parser reads the header line and keys every value by its field name, so it takes
any field list in any order (a capture made with other fields, a driver that adds
one): ``memory.total [MiB]`` names the field ``memory.total``, and a value printed
with its unit (``81920 MiB``, without ``nounits``) loses the unit. ``[N/A]``,
``[Not Supported]`` and the like become None. Drivers from 535 on call the throttle
mask ``clocks_event_reasons.active``; it is read as ``clocks_throttle_reasons.active``
(and ``clocks.current.sm`` as ``clocks.sm``).
Output without a CSV header (``NVIDIA-SMI has failed because it couldn't communicate
with the NVIDIA driver…``) is an error that quotes what was printed.
"""

from __future__ import annotations

import csv
import io
import re

FIELDS = (
    "index", "name", "serial", "uuid", "vbios_version", "driver_version", "memory.total",
    "pci.bus_id", "pcie.link.gen.current", "pcie.link.gen.max", "pcie.link.width.current",
    "pcie.link.width.max", "ecc.mode.current", "temperature.gpu", "power.draw",
    "clocks.sm", "utilization.gpu", "clocks_throttle_reasons.active",
    "ecc.errors.corrected.volatile.total", "ecc.errors.uncorrected.volatile.total",
    "ecc.errors.corrected.aggregate.total", "ecc.errors.uncorrected.aggregate.total",
    "retired_pages.single_bit_ecc.count", "retired_pages.double_bit.count", "retired_pages.pending",
)
ALIASES = {"clocks_event_reasons.active": "clocks_throttle_reasons.active", "clocks.current.sm": "clocks.sm"}
# identities stay text: a serial "0324417023456" or a driver "535.10" is not a number
TEXT_FIELDS = frozenset({"name", "serial", "uuid", "vbios_version", "driver_version", "pci.bus_id", "timestamp"})
_HEADER_CELL = re.compile(r"([A-Za-z][A-Za-z0-9_.]*)(?: \[([^\]]+)\])?")


def query_argv(fields: tuple[str, ...] = FIELDS) -> list[str]:
    return ["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,nounits"]


def _value(raw: str, unit: str | None, text: bool) -> str | float | None:
    raw = raw.strip()
    if unit and raw.endswith(unit):
        raw = raw[: -len(unit)].rstrip()
    if not raw or raw.startswith("[") or raw in ("N/A", "Not Supported"):
        return None
    if text:
        return raw
    if raw.lower().startswith("0x"):
        try:
            return float(int(raw, 16))
        except ValueError:
            return raw
    try:
        return float(raw)
    except ValueError:
        return raw


def parse_csv(text: str) -> list[dict[str, str | float | None]]:
    """One dict per GPU keyed by the header's field names (units stripped)."""
    rows = [r for r in csv.reader(io.StringIO(text), skipinitialspace=True) if any(c.strip() for c in r)]
    if not rows:
        return []
    cells = [_HEADER_CELL.fullmatch(c.strip()) for c in rows[0]]
    if not all(cells):
        raise ValueError(f"nvidia-smi printed no CSV header: {', '.join(rows[0]).strip()[:300]}")
    fields = [ALIASES.get(m.group(1), m.group(1)) for m in cells if m]
    units = [m.group(2) for m in cells if m]
    out = []
    for row in rows[1:]:
        if len(row) != len(fields):
            raise ValueError(f"nvidia-smi CSV row has {len(row)} columns, the header {len(fields)}: {row[:3]}")
        out.append({f: _value(v, u, f in TEXT_FIELDS) for f, v, u in zip(fields, row, units)})
    return out
