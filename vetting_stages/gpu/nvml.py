"""NVML access through the optional ``nvidia-ml-py`` package (``import pynvml``).

Everything here degrades: a missing package, a missing driver or a field a board
does not support yields ``None`` rather than an exception, because the absence of a
counter is not a hardware fault — the stage decides what absence means.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# Clock event ("throttle") reason bits, nvml.h nvmlClocksEventReason*.
THROTTLE_BITS: dict[int, str] = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}
# Reasons that mean the board could not sustain its clocks (a finding under load);
# sw_power_cap is the normal governor at full load and is only recorded.
BAD_THROTTLE = frozenset({"hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown"})


def decode_throttle(mask: int) -> list[str]:
    return [name for bit, name in THROTTLE_BITS.items() if mask & bit]


def load() -> Any | None:
    """The pynvml module, initialised, or None (package or driver missing)."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - NVMLError_LibraryNotFound, DriverNotLoaded...
        return None
    return pynvml


def load_error() -> str:
    """Why :func:`load` returned None, for the stage's reason."""
    try:
        import pynvml
    except ImportError:
        return "nvidia-ml-py (pynvml) is not installed"
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001
        return f"NVML init failed: {exc}"
    return ""


def _call(fn, *args) -> Any:
    try:
        value = fn(*args)
    except Exception:  # noqa: BLE001 - NVMLError_NotSupported and friends
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


@dataclass
class GpuStatic:
    index: int
    name: str | None
    uuid: str | None
    serial: str | None
    vbios: str | None
    driver: str | None
    memory_mib: int | None
    pci_bus_id: str | None
    pcie_gen_current: int | None
    pcie_gen_max: int | None
    pcie_width_current: int | None
    pcie_width_max: int | None
    ecc_current: bool | None
    ecc_pending: bool | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def static_info(nv: Any, index: int) -> GpuStatic:
    h = nv.nvmlDeviceGetHandleByIndex(index)
    mem = _call(nv.nvmlDeviceGetMemoryInfo, h)
    pci = _call(nv.nvmlDeviceGetPciInfo, h)
    ecc = _call(nv.nvmlDeviceGetEccMode, h)
    bus = getattr(pci, "busId", None) if pci is not None else None
    if isinstance(bus, bytes):
        bus = bus.decode()
    return GpuStatic(
        index=index,
        name=_call(nv.nvmlDeviceGetName, h),
        uuid=_call(nv.nvmlDeviceGetUUID, h),
        serial=_call(nv.nvmlDeviceGetSerial, h),
        vbios=_call(nv.nvmlDeviceGetVbiosVersion, h),
        driver=_call(nv.nvmlSystemGetDriverVersion),
        memory_mib=int(mem.total // (1 << 20)) if mem is not None else None,
        pci_bus_id=bus,
        pcie_gen_current=_call(nv.nvmlDeviceGetCurrPcieLinkGeneration, h),
        pcie_gen_max=_call(nv.nvmlDeviceGetMaxPcieLinkGeneration, h),
        pcie_width_current=_call(nv.nvmlDeviceGetCurrPcieLinkWidth, h),
        pcie_width_max=_call(nv.nvmlDeviceGetMaxPcieLinkWidth, h),
        ecc_current=bool(ecc[0]) if ecc else None,
        ecc_pending=bool(ecc[1]) if ecc else None,
    )


def counters(nv: Any, index: int) -> dict[str, float]:
    """Error counters whose growth during the stage is a finding (absent ones omitted)."""
    h = nv.nvmlDeviceGetHandleByIndex(index)
    out: dict[str, float] = {}
    for label, err_type in (("ecc_sbe", "NVML_MEMORY_ERROR_TYPE_CORRECTED"), ("ecc_dbe", "NVML_MEMORY_ERROR_TYPE_UNCORRECTED")):
        for scope, counter in (("volatile", "NVML_VOLATILE_ECC"), ("aggregate", "NVML_AGGREGATE_ECC")):
            v = _call(nv.nvmlDeviceGetTotalEccErrors, h, getattr(nv, err_type), getattr(nv, counter))
            if v is not None:
                out[f"{label}_{scope}"] = float(v)
    for label, cause in (
        ("retired_pages_sbe", "NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS"),
        ("retired_pages_dbe", "NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR"),
    ):
        if hasattr(nv, cause):
            pages = _call(nv.nvmlDeviceGetRetiredPages, h, getattr(nv, cause))
            if pages is not None:
                out[label] = float(len(pages))
    pending = _call(nv.nvmlDeviceGetRetiredPagesPendingStatus, h)
    if pending is not None:
        out["retired_pages_pending"] = float(bool(pending))
    remap = _call(nv.nvmlDeviceGetRemappedRows, h)
    if remap is not None:
        corr, unc, is_pending, failed = remap
        out.update(
            remapped_rows_correctable=float(corr),
            remapped_rows_uncorrectable=float(unc),
            remap_pending=float(bool(is_pending)),
            remap_failure=float(bool(failed)),
        )
    replay = _call(nv.nvmlDeviceGetPcieReplayCounter, h)
    if replay is not None:
        out["pcie_replay"] = float(replay)
    return out


def telemetry(nv: Any, index: int) -> dict[str, Any]:
    """One sample: temperature, power, clocks, utilisation, throttle reasons, PCIe link."""
    h = nv.nvmlDeviceGetHandleByIndex(index)
    out: dict[str, Any] = {}
    t = _call(nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU)
    if t is not None:
        out["temp_c"] = float(t)
    p = _call(nv.nvmlDeviceGetPowerUsage, h)
    if p is not None:
        out["power_w"] = p / 1000.0
    lim = _call(nv.nvmlDeviceGetEnforcedPowerLimit, h)
    if lim is not None:
        out["power_limit_w"] = lim / 1000.0
    sm = _call(nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_SM)
    if sm is not None:
        out["sm_clock_mhz"] = float(sm)
    util = _call(nv.nvmlDeviceGetUtilizationRates, h)
    if util is not None:
        out["util_pct"] = float(util.gpu)
    getter = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
        nv, "nvmlDeviceGetCurrentClocksThrottleReasons", None
    )
    mask = _call(getter, h) if getter else None
    if mask is not None:
        out["throttle_mask"] = int(mask)
        out["throttle"] = decode_throttle(int(mask))
    gen = _call(nv.nvmlDeviceGetCurrPcieLinkGeneration, h)
    width = _call(nv.nvmlDeviceGetCurrPcieLinkWidth, h)
    if gen is not None:
        out["pcie_gen"] = int(gen)
    if width is not None:
        out["pcie_width"] = int(width)
    fi = getattr(nv, "NVML_FI_DEV_MEMORY_TEMP", None)
    if fi is not None:
        vals = _call(nv.nvmlDeviceGetFieldValues, h, [fi])
        if vals:
            v = vals[0]
            if getattr(v, "nvmlReturn", 1) == 0:
                out["mem_temp_c"] = float(getattr(v.value, "uiVal", 0) or getattr(v.value, "ullVal", 0))
    return out


def device_count(nv: Any) -> int:
    return int(_call(nv.nvmlDeviceGetCount) or 0)
