"""Firmware stage (entry point ``firmware``, order 200): snapshot and compare firmware.

Records a :class:`~vetting_core.model.FirmwareSnapshot` per component — BIOS
(dmidecode, or ``/sys/class/dmi/id``), BMC (``ipmitool mc info``), CPU microcode
(``/proc/cpuinfo``), NIC (``ethtool -i``), HBA (``/sys/class/scsi_host/*/version_fw``),
NVMe/disk firmware (``smartctl -i``) and GPU VBIOS (from the inventory's NVML data).
When the expected spec has a ``firmware`` section, a version outside the allowed list
is a critical spec diff and fails the stage: a mismatch is a verdict, not a record.

When the orchestrator read the host's BMC firmware inventory before the boot (a host
with a firmware provider: ``params["bmc_firmware"]``), those versions are recorded
too, identified ``bmc:<inventory id>``, and judged like the host's own: the BMC sees
what the OS cannot (CPLD, PSU, the BMC without in-band IPMI) and reports an update it
applied. A spec line can address one source with an identifier glob
(``bios: {"bmc:*": "2.1"}``); a plain ``bios: "2.1"`` holds both to the version.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from vetting_core import hookimpl
from vetting_core.context import StageContext, StageFailed
from vetting_core.records import StageSpec
from vetting_core.specdiff import SpecError, critical, diff_firmware, spec_from_dict

from .._common import read_sysfs
from ..inventory import parsers
from ..inventory.probes import collect_bmc, collect_disks, collect_nics, collect_system

SCSI_HOSTS = Path("/sys/class/scsi_host")


def hba_firmware(root: Path = SCSI_HOSTS) -> list[dict[str, str]]:
    """HBA firmware from sysfs (mpt3sas, megaraid_sas, smartpqi expose ``version_fw``
    or ``fw_version``); hosts without such an attribute (virtio, ahci) are skipped."""
    out = []
    try:
        hosts = sorted(root.iterdir())
    except OSError:
        return out
    for host in hosts:
        version = read_sysfs(host / "version_fw") or read_sysfs(host / "fw_version") or read_sysfs(host / "firmware_revision")
        if version:
            out.append({"host": host.name, "driver": read_sysfs(host / "proc_name", "") or "", "version": version})
    return out


async def snapshot(ctx: StageContext) -> tuple[list[tuple[str, str, str]], dict[str, str]]:
    """Take every snapshot; return the observations and what was unavailable."""
    seen: list[tuple[str, str, str]] = []
    unavailable: dict[str, str] = {}

    def add(component: str, ident: str, version: str, vendor: str = "", **raw: Any) -> None:
        if version:
            ctx.firmware(component, ident, version, vendor, **raw)
            seen.append((component, ident, version))

    system = await collect_system()
    s = system.get("system", {})
    if s.get("bios_version"):
        add("bios", s.get("board_product") or s.get("product") or "system", s["bios_version"], s.get("bios_vendor", ""), date=s.get("bios_date", ""))
    else:
        unavailable["bios"] = system.get("unavailable", {}).get("system.dmi", "BIOS version not exposed")
    bmc = await collect_bmc()
    if "bmc" in bmc:
        b = bmc["bmc"]
        add("bmc", b.get("manufacturer") or "bmc", b["firmware"], b.get("manufacturer", ""), ipmi_version=b.get("ipmi_version", ""), aux=b.get("aux_firmware", []))
    else:
        unavailable["bmc"] = bmc["unavailable"]["bmc"]
    try:
        cpu = parsers.parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError as exc:
        cpu = {}
        unavailable["microcode"] = str(exc)
    if cpu.get("microcode"):
        add("microcode", cpu.get("model") or "cpu", cpu["microcode"], cpu.get("vendor", ""))
    elif "microcode" not in unavailable:
        unavailable["microcode"] = "/proc/cpuinfo has no microcode line (VM or non-x86)"
    nics = await collect_nics()
    for n in nics.get("nics", []):
        if not n.get("virtual"):
            add("nic", f"{n['name']} {n.get('driver', '')}".strip(), n.get("firmware", ""), n.get("driver", ""), pci=n.get("pci_address"))
    if not any(c == "nic" for c, _, _ in seen):
        unavailable["nic"] = "no physical NIC reports a firmware version"
    for h in hba_firmware():
        add("hba", f"{h['host']} {h['driver']}".strip(), h["version"], h["driver"])
    disks = await collect_disks()
    for d in disks.get("disks", []):
        comp = "nvme_fw" if d.get("transport") == "nvme" or d["name"].startswith("nvme") else "disk_fw"
        add(comp, f"{d['name']} {d.get('model', '')}".strip(), d.get("firmware", ""), serial=d.get("serial", ""))
    for g in ctx.inventory.get("gpus") or []:
        add("gpu_vbios", f"{g.get('index')} {g.get('name', '')}".strip(), g.get("vbios", ""), "NVIDIA", driver=g.get("driver", ""))
    return seen, unavailable


def bmc_reported(ctx: StageContext, unavailable: dict[str, str]) -> list[tuple[str, str, str]]:
    """Record the versions the orchestrator read from the host's BMC (stage params)."""
    seen = []
    for item in ctx.params.get("bmc_firmware") or []:
        if not isinstance(item, dict) or not item.get("version"):
            continue
        ident = f"bmc:{item.get('id', '')}"
        ctx.firmware(str(item.get("component") or "other"), ident, str(item["version"]), "",
                     source="bmc", name=str(item.get("name", "")))
        seen.append((str(item.get("component") or "other"), ident, str(item["version"])))
    if ctx.params.get("bmc_firmware_error"):
        unavailable["bmc_inventory"] = str(ctx.params["bmc_firmware_error"])
    return seen


async def run(ctx: StageContext) -> None:
    seen, unavailable = await snapshot(ctx)
    seen += bmc_reported(ctx, unavailable)
    ctx.summary["firmware"] = [{"component": c, "identifier": i, "version": v} for c, i, v in seen]
    ctx.summary["unavailable"] = unavailable
    for comp, why in sorted(unavailable.items()):
        ctx.log(f"{comp} firmware not recorded: {why}", level="warning")
    if not ctx.spec or not ctx.spec.get("firmware"):
        return
    try:
        spec = spec_from_dict(ctx.spec)
    except SpecError as exc:
        raise StageFailed(f"expected spec is invalid: {exc}") from None
    diffs = diff_firmware(spec.firmware, seen, unavailable)
    ctx.summary["spec_diffs"] = [msgspec.to_builtins(d) for d in diffs]
    for d in diffs:
        ctx.log(f"[{d.severity.value}] {d.field}: {d.message}", level="error" if d.severity.value == "critical" else "warning")
    bad = critical(diffs)
    if bad:
        raise StageFailed(f"{len(bad)} firmware mismatch(es): " + "; ".join(d.message for d in bad[:5]))


FIRMWARE_STAGE = StageSpec(
    name="Firmware",
    run=run,
    order=200,
    description="Snapshot BIOS, BMC, microcode, NIC, HBA, NVMe/disk and GPU firmware; compare with the spec's firmware section.",
    timeout_s=300.0,
)


@hookimpl
def vetting_stages():
    return [FIRMWARE_STAGE]
