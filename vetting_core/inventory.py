"""The inventory document: what the probes found on the machine.

Probes return *fragments*: ``{section: value}`` dicts. :func:`merge_fragments` merges
them into one plain-dict document (what is stored with the run and sent on the wire).
:class:`Inventory` is the typed view of the built-in sections, used by the spec-diff
engine and the stages; plugin probes may add sections of their own, which survive in
``Inventory.extra`` and in the raw document.

A probe that cannot run (tool missing, no permission) reports its section under
``unavailable`` with the reason instead of raising.
"""

from __future__ import annotations

from typing import Any

import msgspec
import structlog

log = structlog.get_logger()


class Cpu(msgspec.Struct, kw_only=True):
    model: str = ""
    vendor: str = ""
    sockets: int = 0
    cores: int = 0  # physical cores, all sockets
    threads: int = 0  # logical CPUs
    max_mhz: float | None = None
    microcode: str | None = None
    flags: list[str] = []


class Dimm(msgspec.Struct, kw_only=True):
    locator: str
    size_gib: float
    speed_mts: int | None = None
    configured_speed_mts: int | None = None
    type: str = ""
    manufacturer: str = ""
    part_number: str = ""
    serial: str = ""


class Memory(msgspec.Struct, kw_only=True):
    total_gib: float = 0.0  # installed (DIMM sum) when known, else MemTotal
    os_total_gib: float = 0.0  # MemTotal from /proc/meminfo
    dimms: list[Dimm] = []


class Disk(msgspec.Struct, kw_only=True):
    name: str  # kernel name: sda, nvme0n1
    path: str  # /dev/sda
    model: str = ""
    serial: str = ""
    size_bytes: int = 0
    rotational: bool = False
    transport: str = ""  # sata, sas, nvme, usb, virtio, loop...
    removable: bool = False
    wwn: str = ""
    firmware: str = ""


class Nic(msgspec.Struct, kw_only=True):
    name: str
    mac: str = ""
    driver: str = ""
    speed_mbps: int | None = None  # negotiated, None when link down/unknown
    max_speed_mbps: int | None = None
    link: str = ""  # up / down
    pci_address: str | None = None
    firmware: str = ""
    virtual: bool = False


class PciDevice(msgspec.Struct, kw_only=True):
    address: str  # 0000:17:00.0
    vendor_id: str = ""
    device_id: str = ""
    class_id: str = ""
    description: str = ""
    driver: str = ""
    current_speed_gts: float | None = None
    max_speed_gts: float | None = None
    current_width: int | None = None
    max_width: int | None = None


class Gpu(msgspec.Struct, kw_only=True):
    index: int
    name: str = ""
    uuid: str = ""
    serial: str = ""
    vbios: str = ""
    driver: str = ""
    memory_mib: int = 0
    pci_address: str = ""
    pcie_gen_current: int | None = None
    pcie_gen_max: int | None = None
    pcie_width_current: int | None = None
    pcie_width_max: int | None = None
    ecc_enabled: bool | None = None


class Bmc(msgspec.Struct, kw_only=True):
    manufacturer: str = ""
    firmware: str = ""
    ipmi_version: str = ""
    device_id: str = ""


class System(msgspec.Struct, kw_only=True):
    vendor: str = ""
    product: str = ""
    serial: str = ""
    board_vendor: str = ""
    board_product: str = ""
    bios_vendor: str = ""
    bios_version: str = ""
    bios_date: str = ""
    hostname: str = ""


class Inventory(msgspec.Struct, kw_only=True):
    cpu: Cpu | None = None
    memory: Memory | None = None
    disks: list[Disk] = []
    nics: list[Nic] = []
    pci: list[PciDevice] = []
    gpus: list[Gpu] = []
    bmc: Bmc | None = None
    system: System | None = None
    unavailable: dict[str, str] = {}  # section -> reason
    extra: dict[str, Any] = {}  # sections contributed by plugin probes


BUILTIN_SECTIONS = frozenset(
    f for f in Inventory.__struct_fields__ if f not in ("unavailable", "extra")
)


def merge_fragments(fragments: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Merge ``(probe name, fragment)`` pairs into one inventory document.

    List sections (disks, nics, ...) from several probes are concatenated; a scalar
    section given twice keeps the first and logs the conflict. ``unavailable`` maps
    merge; a section that some probe did deliver is removed from ``unavailable``.
    """
    doc: dict[str, Any] = {"unavailable": {}}
    for probe, fragment in fragments:
        if not isinstance(fragment, dict):
            # a plugin probe returning garbage must not cost the whole inventory
            doc["unavailable"][f"probe:{probe}"] = (
                f"probe returned {type(fragment).__name__}, not a mapping of sections"
            )
            log.warning("inventory.bad_fragment", probe=probe, type=type(fragment).__name__)
            continue
        for section, value in fragment.items():
            if section == "unavailable":
                if isinstance(value, dict):
                    doc["unavailable"].update({str(k): str(v) for k, v in value.items()})
                else:
                    log.warning("inventory.bad_unavailable", probe=probe)
                continue
            if section not in doc:
                doc[section] = value
            elif isinstance(doc[section], list) and isinstance(value, list):
                doc[section] = doc[section] + value
            elif isinstance(doc[section], dict) and isinstance(value, dict):
                doc[section] = {**value, **doc[section]}
            else:
                log.warning("inventory.section_conflict", section=section, probe=probe)
    for section in list(doc["unavailable"]):
        if section in doc:
            del doc["unavailable"][section]
    return doc


def typed(doc: dict[str, Any]) -> Inventory:
    """The typed view of an inventory document (unknown sections go to ``extra``)."""
    known = {k: v for k, v in doc.items() if k in BUILTIN_SECTIONS or k == "unavailable"}
    extra = {k: v for k, v in doc.items() if k not in known}
    return msgspec.convert({**known, "extra": extra}, Inventory)
