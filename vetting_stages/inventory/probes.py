"""The built-in inventory probes: each glues commands/sysfs reads to a pure parser and
returns a fragment ``{section: value}``.

A probe never raises for a missing tool or permission: it returns
``{"unavailable": {section: reason}}`` so the inventory says *why* a section is
missing (a VM without SMBIOS, a host without a BMC, no NVIDIA driver) and SpecValidate
can turn "cannot verify" into a warning instead of a crash.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import structlog

from vetting_core.records import ProbeSpec
from vetting_core.tools import ToolNotFound, run_tool

from .._common import read_sysfs, to_int
from . import parsers

log = structlog.get_logger()

SYS_NET = Path("/sys/class/net")
SYS_PCI = Path("/sys/bus/pci/devices")


async def _run(argv: list[str], timeout: float = 30.0):
    """run_tool, turning a missing binary into ``(None, reason)``."""
    try:
        return await run_tool(argv, timeout=timeout), None
    except ToolNotFound as exc:
        return None, str(exc)
    except OSError as exc:  # permission denied executing it, etc.
        return None, f"{argv[0]}: {exc}"


def _failed(result, what: str) -> str | None:
    if result.timed_out:
        return f"{what} timed out after {result.duration_s:.0f}s"
    if result.returncode != 0 and not result.stdout.strip():
        return f"{what} exited {result.returncode}: {result.stderr.strip()[:300]}"
    return None


# -- CPU -------------------------------------------------------------------------------


async def collect_cpu() -> dict[str, Any]:
    try:
        cpuinfo = parsers.parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError as exc:
        cpuinfo, why = None, f"/proc/cpuinfo unreadable: {exc}"
    else:
        why = None
    lscpu = None
    res, missing = await _run(["lscpu", "-J"])
    if res is not None and not _failed(res, "lscpu"):
        try:
            lscpu = parsers.parse_lscpu_json(res.stdout)
        except ValueError as exc:
            log.warning("probe.lscpu_unparseable", error=str(exc))
    if cpuinfo is None and lscpu is None:
        return {"unavailable": {"cpu": why or missing or "lscpu failed"}}
    return {"cpu": parsers.merge_cpu(cpuinfo, lscpu)}


# -- memory ----------------------------------------------------------------------------


async def collect_memory() -> dict[str, Any]:
    try:
        meminfo = parsers.parse_meminfo(Path("/proc/meminfo").read_text())
    except OSError as exc:
        return {"unavailable": {"memory": f"/proc/meminfo unreadable: {exc}"}}
    os_gib = meminfo.get("MemTotal", 0) / 2**20
    memory: dict[str, Any] = {"total_gib": round(os_gib, 3), "os_total_gib": round(os_gib, 3), "dimms": []}
    frag: dict[str, Any] = {"memory": memory}
    res, missing = await _run(["dmidecode", "-t", "17"])
    why = missing or (res and parsers.dmidecode_error(res.stdout, res.stderr, res.returncode))
    if why:
        frag["unavailable"] = {"memory.dimms": why}
    else:
        dimms = parsers.dimms_from_dmi(parsers.parse_dmidecode(res.stdout))
        memory["dimms"] = dimms
        if dimms:
            memory["total_gib"] = round(sum(d["size_gib"] for d in dimms), 3)
    return frag


# -- disks -----------------------------------------------------------------------------


async def collect_disks() -> dict[str, Any]:
    res, missing = await _run(["lsblk", "-J", "-b", "-d", "-o", parsers.LSBLK_COLUMNS])
    if res is None:
        return {"unavailable": {"disks": missing}}
    if why := _failed(res, "lsblk"):
        return {"unavailable": {"disks": why}}
    try:
        disks = [d for d in parsers.parse_lsblk(res.stdout) if d["size_bytes"] > 0 and d["transport"] != "loop"]
    except ValueError as exc:
        return {"unavailable": {"disks": str(exc)}}
    for disk in disks:
        info, _ = await _run(["smartctl", "-i", "-j", disk["path"]], timeout=30)
        if info is None:
            continue
        try:
            ident = parsers.parse_smartctl_info(info.stdout)
        except ValueError:
            continue
        if "error" in ident:
            disk["smart"] = ident["error"]
            continue
        for key in ("model", "serial", "firmware"):
            if ident.get(key) and not disk.get(key):
                disk[key] = ident[key]
            elif key == "firmware" and ident.get(key):
                disk[key] = ident[key]  # smartctl's firmware is exact; lsblk REV is truncated
    return {"disks": disks}


# -- NICs ------------------------------------------------------------------------------


async def collect_nics(root: Path = SYS_NET) -> dict[str, Any]:
    try:
        names = sorted(p.name for p in root.iterdir())
    except OSError as exc:
        return {"unavailable": {"nics": f"{root} unreadable: {exc}"}}
    nics = []
    for name in names:
        if name == "lo":
            continue
        base = root / name
        nic: dict[str, Any] = {
            "name": name,
            "mac": read_sysfs(base / "address", "") or "",
            "virtual": not (base / "device").exists(),
            "link": read_sysfs(base / "operstate", "") or "",
        }
        speed = to_int(read_sysfs(base / "speed"))
        nic["speed_mbps"] = speed if speed and speed > 0 else None
        res, _ = await _run(["ethtool", name], timeout=10)
        if res is not None and res.stdout.strip():
            eth = parsers.parse_ethtool(res.stdout)
            nic["speed_mbps"] = eth["speed_mbps"] or nic["speed_mbps"]
            nic["max_speed_mbps"] = eth["max_speed_mbps"]
            nic["link"] = eth["link"] or nic["link"]
        res, _ = await _run(["ethtool", "-i", name], timeout=10)
        if res is not None and res.returncode == 0:
            drv = parsers.parse_ethtool_driver(res.stdout)
            nic.update(driver=drv["driver"], firmware=drv["firmware"], pci_address=drv["pci_address"])
        nics.append(nic)
    return {"nics": nics}


# -- PCI -------------------------------------------------------------------------------


def pci_from_sysfs(root: Path = SYS_PCI) -> list[dict[str, Any]]:
    """Every PCI function with its link speed/width, current and maximum (absent for
    devices without a PCIe capability, e.g. virtio in a VM)."""
    out = []
    for dev in sorted(root.iterdir()):
        driver = dev / "driver"
        out.append(
            {
                "address": dev.name,
                "vendor_id": (read_sysfs(dev / "vendor", "") or "").removeprefix("0x"),
                "device_id": (read_sysfs(dev / "device", "") or "").removeprefix("0x"),
                "class_id": (read_sysfs(dev / "class", "") or "").removeprefix("0x"),
                "driver": os.path.basename(os.readlink(driver)) if driver.is_symlink() else "",
                "current_speed_gts": parsers.parse_link_speed(read_sysfs(dev / "current_link_speed")),
                "max_speed_gts": parsers.parse_link_speed(read_sysfs(dev / "max_link_speed")),
                "current_width": parsers.parse_link_width(read_sysfs(dev / "current_link_width")),
                "max_width": parsers.parse_link_width(read_sysfs(dev / "max_link_width")),
            }
        )
    return out


async def collect_pci(root: Path = SYS_PCI) -> dict[str, Any]:
    try:
        devices = pci_from_sysfs(root)
    except OSError as exc:
        return {"unavailable": {"pci": f"{root} unreadable: {exc}"}}
    names = await _lspci_names()
    for d in devices:
        d["description"] = names.get(d["address"], "")
    return {"pci": devices}


async def _lspci_names() -> dict[str, str]:
    """Human names from ``lspci -D -mm`` when pciutils is installed (optional)."""
    res, _ = await _run(["lspci", "-D", "-mm"], timeout=15)
    out: dict[str, str] = {}
    if res is None or res.returncode != 0:
        return out
    import shlex

    for line in res.stdout.splitlines():
        try:
            parts = shlex.split(line)
        except ValueError:
            continue
        if len(parts) >= 4:
            out[parts[0]] = f"{parts[2]} {parts[3]}"
    return out


# -- GPUs ------------------------------------------------------------------------------


def _nvml_gpus() -> list[dict[str, Any]]:
    import pynvml  # nvidia-ml-py, the optional `gpu` extra

    def text(v: Any) -> str:
        return v.decode() if isinstance(v, bytes) else str(v)

    def opt(fn, *args):
        try:
            return fn(*args)
        except pynvml.NVMLError:
            return None

    pynvml.nvmlInit()
    try:
        gpus = []
        driver = text(pynvml.nvmlSystemGetDriverVersion())
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            ecc = opt(pynvml.nvmlDeviceGetEccMode, h)
            gpus.append(
                {
                    "index": i,
                    "name": text(pynvml.nvmlDeviceGetName(h)),
                    "uuid": text(pynvml.nvmlDeviceGetUUID(h)),
                    "serial": text(opt(pynvml.nvmlDeviceGetSerial, h) or ""),
                    "vbios": text(opt(pynvml.nvmlDeviceGetVbiosVersion, h) or ""),
                    "driver": driver,
                    "memory_mib": pynvml.nvmlDeviceGetMemoryInfo(h).total // 2**20,
                    "pci_address": text(pynvml.nvmlDeviceGetPciInfo(h).busId).lower()[-12:],
                    "pcie_gen_current": opt(pynvml.nvmlDeviceGetCurrPcieLinkGeneration, h),
                    "pcie_gen_max": opt(pynvml.nvmlDeviceGetMaxPcieLinkGeneration, h),
                    "pcie_width_current": opt(pynvml.nvmlDeviceGetCurrPcieLinkWidth, h),
                    "pcie_width_max": opt(pynvml.nvmlDeviceGetMaxPcieLinkWidth, h),
                    "ecc_enabled": None if ecc is None else bool(ecc[0]),
                }
            )
        return gpus
    finally:
        pynvml.nvmlShutdown()


async def collect_gpus() -> dict[str, Any]:
    try:
        import pynvml  # noqa: F401
    except ImportError:
        return {"unavailable": {"gpus": "nvidia-ml-py (pynvml) is not installed"}}
    import anyio.to_thread

    try:
        return {"gpus": await anyio.to_thread.run_sync(_nvml_gpus)}
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded...
        return {"unavailable": {"gpus": f"NVML: {type(exc).__name__}: {exc}"}}


# -- BMC and system --------------------------------------------------------------------


async def collect_bmc() -> dict[str, Any]:
    res, missing = await _run(["ipmitool", "mc", "info"], timeout=20)
    if res is None:
        return {"unavailable": {"bmc": missing}}
    try:
        return {"bmc": parsers.parse_ipmitool_mc_info(res.stdout)}
    except ValueError:
        why = _failed(res, "ipmitool mc info") or res.stderr.strip() or "no BMC answered"
        return {"unavailable": {"bmc": why[:300]}}


async def collect_system() -> dict[str, Any]:
    frag: dict[str, Any] = {}
    res, missing = await _run(["dmidecode", "-t", "0", "-t", "1", "-t", "2"])
    why = missing or (res and parsers.dmidecode_error(res.stdout, res.stderr, res.returncode))
    system: dict[str, Any] = {"hostname": socket.gethostname()}
    if why:
        frag["unavailable"] = {"system.dmi": why}
        # sysfs carries the same DMI strings when the kernel exposes them
        dmi = Path("/sys/class/dmi/id")
        for key, attr in (("vendor", "sys_vendor"), ("product", "product_name"), ("bios_version", "bios_version"),
                          ("bios_vendor", "bios_vendor"), ("board_product", "board_name")):
            if value := read_sysfs(dmi / attr):
                system[key] = value
    else:
        system.update(parsers.system_from_dmi(parsers.parse_dmidecode(res.stdout)))
    frag["system"] = system
    return frag


BUILTIN_PROBES: tuple[ProbeSpec, ...] = (
    ProbeSpec(name="cpu", collect=collect_cpu, sections=("cpu",), description="/proc/cpuinfo + lscpu -J"),
    ProbeSpec(name="memory", collect=collect_memory, sections=("memory",), description="/proc/meminfo + dmidecode -t 17"),
    ProbeSpec(name="disks", collect=collect_disks, sections=("disks",), description="lsblk -J + smartctl -i -j"),
    ProbeSpec(name="nics", collect=collect_nics, sections=("nics",), description="/sys/class/net + ethtool"),
    ProbeSpec(name="pci", collect=collect_pci, sections=("pci",), description="sysfs PCIe link speed/width"),
    ProbeSpec(name="gpus", collect=collect_gpus, sections=("gpus",), description="NVML (nvidia-ml-py)"),
    ProbeSpec(name="bmc", collect=collect_bmc, sections=("bmc",), description="ipmitool mc info"),
    ProbeSpec(name="system", collect=collect_system, sections=("system",), description="dmidecode BIOS/system/board"),
)
