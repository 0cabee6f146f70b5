"""``nvidia-smi --query-gpu … --format=csv`` fallback when pynvml is not installed.

NVML (through pynvml) is the primary source; nvidia-smi is what every driver ships,
so the stage can still inventory and sample GPUs without the Python package. The
CSV form is documented (``nvidia-smi --help-query-gpu``) and stable across drivers,
unlike the human-readable ``-q`` output. ``[N/A]``/``[Not Supported]`` become None.
"""

from __future__ import annotations

import csv
import io

FIELDS = (
    "index", "name", "serial", "uuid", "vbios_version", "driver_version", "memory.total",
    "pci.bus_id", "pcie.link.gen.current", "pcie.link.gen.max", "pcie.link.width.current",
    "pcie.link.width.max", "ecc.mode.current", "temperature.gpu", "power.draw",
    "clocks.sm", "utilization.gpu", "clocks_throttle_reasons.active",
    "ecc.errors.corrected.volatile.total", "ecc.errors.uncorrected.volatile.total",
    "ecc.errors.corrected.aggregate.total", "ecc.errors.uncorrected.aggregate.total",
    "retired_pages.single_bit_ecc.count", "retired_pages.double_bit.count", "retired_pages.pending",
)


def query_argv(fields: tuple[str, ...] = FIELDS) -> list[str]:
    return ["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"]


def _value(raw: str) -> str | float | None:
    raw = raw.strip()
    if not raw or raw.startswith("[") or raw in ("N/A", "Not Supported"):
        return None
    if raw.lower().startswith("0x"):
        try:
            return float(int(raw, 16))
        except ValueError:
            return raw
    try:
        return float(raw)
    except ValueError:
        return raw


def parse_csv(text: str, fields: tuple[str, ...] = FIELDS) -> list[dict[str, str | float | None]]:
    """One dict per GPU keyed by the query field names."""
    rows = []
    for row in csv.reader(io.StringIO(text), skipinitialspace=True):
        if not row or not any(c.strip() for c in row):
            continue
        if len(row) != len(fields):
            raise ValueError(f"nvidia-smi CSV row has {len(row)} columns, expected {len(fields)}: {row[:3]}")
        rows.append({f: _value(v) for f, v in zip(fields, row)})
    return rows
