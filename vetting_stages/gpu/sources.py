"""Where GPU facts come from: NVML (preferred) or ``nvidia-smi`` CSV (fallback).

Both expose the same async interface so the stage does not care which it got.
"""

from __future__ import annotations

from typing import Any

from vetting_core.tools import ToolNotFound, run_tool

from . import nvidia_smi, nvml


class NvmlSource:
    kind = "nvml"

    def __init__(self, nv: Any) -> None:
        self.nv = nv

    async def count(self) -> int:
        return nvml.device_count(self.nv)

    async def static(self, i: int) -> dict[str, Any]:
        return nvml.static_info(self.nv, i).as_dict()

    async def counters(self, i: int) -> dict[str, float]:
        return nvml.counters(self.nv, i)

    async def telemetry(self, i: int) -> dict[str, Any]:
        return nvml.telemetry(self.nv, i)

    def close(self) -> None:
        try:
            self.nv.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


_COUNTER_FIELDS = {
    "ecc.errors.corrected.volatile.total": "ecc_sbe_volatile",
    "ecc.errors.uncorrected.volatile.total": "ecc_dbe_volatile",
    "ecc.errors.corrected.aggregate.total": "ecc_sbe_aggregate",
    "ecc.errors.uncorrected.aggregate.total": "ecc_dbe_aggregate",
    "retired_pages.single_bit_ecc.count": "retired_pages_sbe",
    "retired_pages.double_bit.count": "retired_pages_dbe",
}


def static_from_row(row: dict[str, Any]) -> dict[str, Any]:
    def as_int(v: Any) -> int | None:
        return int(v) if isinstance(v, float) else None

    ecc = row.get("ecc.mode.current")
    return {
        "index": as_int(row.get("index")),
        "name": row.get("name"),
        "uuid": row.get("uuid"),
        "serial": row.get("serial"),
        "vbios": row.get("vbios_version"),
        "driver": row.get("driver_version"),
        "memory_mib": as_int(row.get("memory.total")),
        "pci_bus_id": row.get("pci.bus_id"),
        "pcie_gen_current": as_int(row.get("pcie.link.gen.current")),
        "pcie_gen_max": as_int(row.get("pcie.link.gen.max")),
        "pcie_width_current": as_int(row.get("pcie.link.width.current")),
        "pcie_width_max": as_int(row.get("pcie.link.width.max")),
        "ecc_current": None if ecc is None else str(ecc).lower() == "enabled",
        "ecc_pending": None,
    }


def counters_from_row(row: dict[str, Any]) -> dict[str, float]:
    out = {name: float(row[f]) for f, name in _COUNTER_FIELDS.items() if isinstance(row.get(f), float)}
    pending = row.get("retired_pages.pending")
    if isinstance(pending, str):
        out["retired_pages_pending"] = 1.0 if pending.lower() == "yes" else 0.0
    return out


def telemetry_from_row(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f, k in (("temperature.gpu", "temp_c"), ("power.draw", "power_w"), ("clocks.sm", "sm_clock_mhz"),
                 ("utilization.gpu", "util_pct"), ("pcie.link.gen.current", "pcie_gen"),
                 ("pcie.link.width.current", "pcie_width")):
        if isinstance(row.get(f), float):
            out[k] = row[f]
    mask = row.get("clocks_throttle_reasons.active")
    if isinstance(mask, float):
        out["throttle_mask"] = int(mask)
        out["throttle"] = nvml.decode_throttle(int(mask))
    return out


class SmiSource:
    kind = "nvidia-smi"

    def __init__(self) -> None:
        self._rows: list[dict[str, Any]] = []

    async def refresh(self) -> list[dict[str, Any]]:
        res = await run_tool(nvidia_smi.query_argv(), timeout=30)
        if res.returncode != 0:
            raise RuntimeError(f"nvidia-smi failed ({res.returncode}): {(res.stdout + res.stderr).strip()[:300]}")
        self._rows = nvidia_smi.parse_csv(res.stdout)
        return self._rows

    async def count(self) -> int:
        return len(await self.refresh())

    async def static(self, i: int) -> dict[str, Any]:
        return static_from_row(self._rows[i])

    async def counters(self, i: int) -> dict[str, float]:
        await self.refresh()
        return counters_from_row(self._rows[i])

    async def telemetry(self, i: int) -> dict[str, Any]:
        await self.refresh()
        return telemetry_from_row(self._rows[i])

    def close(self) -> None:
        pass


async def open_source() -> tuple[NvmlSource | SmiSource | None, str]:
    """The best available source and, when none, why."""
    nv = nvml.load()
    if nv is not None:
        return NvmlSource(nv), ""
    why = nvml.load_error()
    try:
        src = SmiSource()
        await src.refresh()
        return src, ""
    except ToolNotFound:
        return None, f"{why}; nvidia-smi is not installed"
    except (RuntimeError, ValueError) as exc:
        return None, f"{why}; {exc}"
