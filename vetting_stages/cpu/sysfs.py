"""CPU facts read from sysfs: thermal-throttle counters and thermal zones.

A CPU that throttles under load is a finding even when stress-ng passes, so the
stage records the kernel's throttle counters before and after as counter samples
(``cpu_throttle``, judged with ``delta_lte 0``). Paths take a ``root`` so tests can
point them at a directory tree; the defaults are the real sysfs.
"""

from __future__ import annotations

from pathlib import Path


def throttle_counters(root: str | Path = "/sys/devices/system/cpu") -> dict[str, int]:
    """``{"cpu0/core_throttle_count": n, "cpu0/package_throttle_count": n, ...}``.

    Empty when the kernel exposes none (virtual machines, non-Intel CPUs).
    """
    out: dict[str, int] = {}
    for d in sorted(Path(root).glob("cpu[0-9]*/thermal_throttle")):
        cpu = d.parent.name
        for f in ("core_throttle_count", "package_throttle_count"):
            try:
                out[f"{cpu}/{f}"] = int((d / f).read_text().strip())
            except (OSError, ValueError):
                continue
    return out


def thermal_zones(root: str | Path = "/sys/class/thermal") -> dict[str, float]:
    """``{"x86_pkg_temp": 47.0, "acpitz": 40.0}`` in °C (duplicate types get a suffix)."""
    out: dict[str, float] = {}
    for d in sorted(Path(root).glob("thermal_zone*")):
        try:
            kind = (d / "type").read_text().strip() or d.name
            value = int((d / "temp").read_text().strip()) / 1000.0
        except (OSError, ValueError):
            continue
        key, n = kind, 1
        while key in out:
            n += 1
            key = f"{kind}{n}"
        out[key] = value
    return out


def online_cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
