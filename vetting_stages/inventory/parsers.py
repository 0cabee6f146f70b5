"""Pure parsers of the inventory tools' output, tested on captured real output under
``tests/fixtures/<tool>/<version>/``. Each returns plain dicts shaped like the
sections of :mod:`vetting_core.inventory` (``Cpu``, ``Dimm``, ``Disk``...), so the
probes only glue a command to a parser."""

from __future__ import annotations

import re
from typing import Any

from .._common import colon_fields, loads_json, to_float, to_int
from ..smart.parser import identity

# -- CPU -------------------------------------------------------------------------------


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """``/proc/cpuinfo`` → model, vendor, microcode, sockets, cores, threads, flags."""
    blocks = [b for b in re.split(r"\n\s*\n", text) if b.strip()]
    threads = 0
    sockets: set[str] = set()
    cores: set[tuple[str, str]] = set()
    first: dict[str, str] = {}
    for block in blocks:
        fields: dict[str, str] = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        if "processor" not in fields:
            continue
        threads += 1
        if not first:
            first = fields
        phys = fields.get("physical id", "0")
        sockets.add(phys)
        cores.add((phys, fields.get("core id", fields["processor"])))
    flags = first.get("flags") or first.get("Features") or ""
    return {
        "model": first.get("model name") or first.get("cpu model") or first.get("Processor", ""),
        "vendor": first.get("vendor_id", ""),
        "microcode": first.get("microcode"),
        "sockets": len(sockets) if threads else 0,
        "cores": len(cores),
        "threads": threads,
        "flags": flags.split(),
    }


def _lscpu_fields(entries: list[dict[str, Any]], out: dict[str, str]) -> None:
    for e in entries:
        field = str(e.get("field", "")).rstrip(":").strip()
        if field and field not in out:
            out[field] = "" if e.get("data") is None else str(e["data"])
        if e.get("children"):  # util-linux ≥ 2.38 nests fields
            _lscpu_fields(e["children"], out)


def parse_lscpu_json(text: str) -> dict[str, Any]:
    """``lscpu -J`` → the CPU section (sockets × cores per socket is authoritative)."""
    doc = loads_json(text, "lscpu -J")
    fields: dict[str, str] = {}
    _lscpu_fields(doc.get("lscpu", []), fields)
    sockets = to_int(fields.get("Socket(s)")) or 0
    per_socket = to_int(fields.get("Core(s) per socket")) or 0
    threads = to_int(fields.get("CPU(s)")) or 0
    return {
        "model": fields.get("Model name", ""),
        "vendor": fields.get("Vendor ID", ""),
        "sockets": sockets,
        "cores": sockets * per_socket,
        "threads": threads,
        "max_mhz": to_float(fields.get("CPU max MHz")),
        "flags": fields.get("Flags", "").split(),
    }


def merge_cpu(cpuinfo: dict[str, Any] | None, lscpu: dict[str, Any] | None) -> dict[str, Any]:
    """lscpu's topology wins (cpuinfo lacks ``physical id`` in VMs and on ARM);
    cpuinfo supplies the microcode revision."""
    out: dict[str, Any] = dict(cpuinfo or {})
    for key, value in (lscpu or {}).items():
        if value not in (None, "", 0, []):
            out[key] = value
    out.setdefault("flags", [])
    return out


# -- memory ----------------------------------------------------------------------------


def parse_meminfo(text: str) -> dict[str, int]:
    """``/proc/meminfo`` → {field: kB}."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        n = to_int(value) if sep else None
        if n is not None:
            out[key.strip()] = n
    return out


def parse_dmidecode(text: str) -> list[dict[str, Any]]:
    """``dmidecode`` text → records ``{"handle", "type", "title", "fields", "lists"}``.

    A field followed by indented lines (``Characteristics:``) becomes a list under
    ``lists``. Leading spaces vary between captures (tabs, 4 or 5 spaces), so nesting
    is judged by relative indentation."""
    records: list[dict[str, Any]] = []
    cur: dict[str, Any] | None = None
    base: int | None = None
    last_key: str | None = None
    for raw in text.splitlines():
        line = raw.expandtabs(8)
        m = re.match(r"\s*Handle (0x[0-9A-Fa-f]+), DMI type (\d+)", line)
        if m:
            cur = {"handle": m.group(1), "type": int(m.group(2)), "title": "", "fields": {}, "lists": {}}
            records.append(cur)
            base, last_key = None, None
            continue
        if cur is None or not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if not cur["title"]:
            cur["title"] = line.strip()
            continue
        if base is None:
            base = indent
        if indent > base and last_key is not None:
            cur["lists"].setdefault(last_key, []).append(line.strip())
            continue
        key, sep, value = line.strip().partition(":")
        if sep:
            last_key = key.strip()
            cur["fields"][last_key] = value.strip()
    return records


def _size_gib(text: str | None) -> float | None:
    m = re.match(r"\s*(\d+(?:\.\d+)?)\s*(kB|KB|MB|GB|TB)", text or "")
    if not m:
        return None
    n = float(m.group(1))
    return n * {"kB": 2**-20, "KB": 2**-20, "MB": 2**-10, "GB": 1, "TB": 1024}[m.group(2)]


_UNSET = {"", "Not Specified", "Unknown", "None", "NO DIMM", "Not Provided", "To Be Filled By O.E.M."}


def _clean(value: str | None) -> str:
    return "" if value is None or value.strip() in _UNSET else value.strip()


def dimms_from_dmi(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Populated DMI type 17 memory devices (empty slots skipped)."""
    out = []
    for r in records:
        if r["type"] != 17:
            continue
        f = r["fields"]
        size = _size_gib(f.get("Size"))
        if not size:
            continue  # "No Module Installed"
        out.append(
            {
                "locator": f.get("Locator", r["handle"]),
                "size_gib": round(size, 3),
                "speed_mts": to_int(f.get("Speed")),
                "configured_speed_mts": to_int(f.get("Configured Memory Speed") or f.get("Configured Clock Speed")),
                "type": _clean(f.get("Type")),
                "manufacturer": _clean(f.get("Manufacturer")),
                "part_number": _clean(f.get("Part Number")),
                "serial": _clean(f.get("Serial Number")),
            }
        )
    return out


def system_from_dmi(records: list[dict[str, Any]]) -> dict[str, str]:
    """DMI types 0 (BIOS), 1 (system) and 2 (base board) → the ``system`` section."""
    by_type: dict[int, dict[str, str]] = {}
    for r in records:
        by_type.setdefault(r["type"], r["fields"])
    bios, sysinfo, board = by_type.get(0, {}), by_type.get(1, {}), by_type.get(2, {})
    return {
        "vendor": _clean(sysinfo.get("Manufacturer")),
        "product": _clean(sysinfo.get("Product Name")),
        "serial": _clean(sysinfo.get("Serial Number")),
        "board_vendor": _clean(board.get("Manufacturer")),
        "board_product": _clean(board.get("Product Name")),
        "bios_vendor": _clean(bios.get("Vendor")),
        "bios_version": _clean(bios.get("Version")),
        "bios_date": _clean(bios.get("Release Date")),
    }


def dmidecode_error(stdout: str, stderr: str, returncode: int | None) -> str | None:
    """Why dmidecode gave nothing usable (no SMBIOS in a VM/container, no /dev/mem
    permission), or None when it found tables."""
    if "Handle 0x" in stdout:
        return None
    text = (stderr or stdout).strip().splitlines()
    tail = "; ".join(line for line in text if line and not line.startswith("#"))[:300]
    return f"dmidecode found no SMBIOS tables (rc={returncode}): {tail or 'no output'}"


# -- disks -----------------------------------------------------------------------------

LSBLK_COLUMNS = "NAME,KNAME,PATH,TYPE,SIZE,MODEL,SERIAL,ROTA,TRAN,RM,HOTPLUG,WWN,REV,VENDOR,SUBSYSTEMS,FSTYPE,PTTYPE,MOUNTPOINT"


def _transport(dev: dict[str, Any]) -> str:
    tran = (dev.get("tran") or "").lower()
    if tran:
        return tran
    name = _devname(dev)
    subsystems = dev.get("subsystems") or ""
    if name.startswith("nvme"):
        return "nvme"
    if name.startswith("loop"):
        return "loop"
    if "virtio" in subsystems:
        return "virtio"
    if "usb" in subsystems:
        return "usb"
    return ""


def _bool(v: Any) -> bool:
    # util-linux < 2.33 prints "0"/"1" strings, later versions JSON booleans
    return v in (True, 1, "1", "true")


def _devname(dev: dict[str, Any]) -> str:
    """The kernel name; ``lsblk --paths`` prints ``/dev/nvme0n1`` where it would print
    ``nvme0n1``."""
    return (dev.get("kname") or dev.get("name") or "").rsplit("/", 1)[-1]


def parse_lsblk(text: str) -> list[dict[str, Any]]:
    """``lsblk -J -b -o LSBLK_COLUMNS`` → whole disks (``type == disk``) as Disk dicts,
    with ``children`` summarised for the wipe probe."""
    doc = loads_json(text, "lsblk -J")
    out = []
    for dev in doc.get("blockdevices", []):
        if dev.get("type") not in ("disk", "loop"):
            continue
        name = _devname(dev)
        out.append(
            {
                "name": name,
                "path": dev.get("path") or f"/dev/{name}",
                "model": (dev.get("model") or "").strip(),
                "serial": (dev.get("serial") or "").strip(),
                "size_bytes": to_int(dev.get("size")) or 0,
                "rotational": _bool(dev.get("rota")),
                "transport": _transport(dev),
                "removable": _bool(dev.get("rm")) or _bool(dev.get("hotplug")) and _transport(dev) == "usb",
                "wwn": (dev.get("wwn") or "").strip(),
                "firmware": (dev.get("rev") or "").strip(),
            }
        )
    return out


def parse_smartctl_info(text: str) -> dict[str, Any]:
    """``smartctl -i -j DEV`` → identity fields, or ``{"error": ...}`` when smartctl
    could not open/identify the device (virtio disks, USB bridges without SAT)."""
    doc = loads_json(text, "smartctl -j")
    status = (doc.get("smartctl") or {}).get("exit_status", 0)
    messages = [m.get("string", "") for m in (doc.get("smartctl") or {}).get("messages", [])]
    if status & 0b11 or "device" not in doc:
        return {"error": "; ".join(messages) or f"smartctl exit status {status}"}
    return {
        **identity(doc),  # SCSI fields moved to scsi_model_name/scsi_revision in smartctl 7.3
        "protocol": (doc.get("device") or {}).get("protocol", ""),
        "size_bytes": (doc.get("user_capacity") or {}).get("bytes"),
        "rotation_rate": doc.get("rotation_rate"),
        "smart_available": (doc.get("smart_support") or {}).get("available"),
    }


# -- NICs ------------------------------------------------------------------------------


def parse_ethtool(text: str) -> dict[str, Any]:
    """``ethtool IFACE`` → negotiated speed (None when unknown), link state and the
    fastest supported link mode."""
    speed_m = re.search(r"^\s*Speed:\s*(\S+)", text, re.M)
    speed = to_int(speed_m.group(1)) if speed_m else None
    link_m = re.search(r"^\s*Link detected:\s*(\w+)", text, re.M)
    modes_m = re.search(r"Supported link modes:(.*?)(?:\n\s*Supported pause|\n\s*Supports auto)", text, re.S)
    max_speed = None
    if modes_m:
        speeds = [int(s) for s in re.findall(r"(\d+)base", modes_m.group(1))]
        max_speed = max(speeds) if speeds else None
    return {
        "speed_mbps": speed if speed and speed > 0 else None,
        "max_speed_mbps": max_speed,
        "link": {"yes": "up", "no": "down"}.get(link_m.group(1), "") if link_m else "",
        "duplex": (re.search(r"^\s*Duplex:\s*(\S+)", text, re.M) or [None, ""])[1],
    }


def parse_ethtool_driver(text: str) -> dict[str, str]:
    """``ethtool -i IFACE`` → driver, version, firmware, PCI bus address."""
    f = colon_fields(text)
    bus = f.get("bus-info", "")
    return {
        "driver": f.get("driver", ""),
        "driver_version": f.get("version", ""),
        "firmware": f.get("firmware-version", ""),
        "pci_address": bus if re.match(r"^[0-9a-f]{4}:[0-9a-f]{2}:", bus) else None,
    }


# -- BMC -------------------------------------------------------------------------------


def parse_ipmitool_mc_info(text: str) -> dict[str, Any]:
    """``ipmitool mc info`` → the ``bmc`` section (Aux firmware bytes kept raw)."""
    f = colon_fields(text)
    if "Firmware Revision" not in f:
        raise ValueError("ipmitool mc info: no 'Firmware Revision' line")
    aux = re.search(r"Aux Firmware Rev Info\s*:[ \t]*\n((?:[ \t]+0x[0-9a-fA-F]+[ \t]*(?:\n|$))+)", text)
    return {
        "manufacturer": f.get("Manufacturer Name", ""),
        "firmware": f.get("Firmware Revision", ""),
        "ipmi_version": f.get("IPMI Version", ""),
        "device_id": f.get("Device ID", ""),
        "product": f.get("Product Name", ""),
        "aux_firmware": aux.group(1).split() if aux else [],
    }


# -- PCI -------------------------------------------------------------------------------


def parse_link_speed(text: str | None) -> float | None:
    """sysfs ``current_link_speed`` (``"16.0 GT/s PCIe"``, ``"2.5 GT/s"``, ``"Unknown"``)."""
    if not text:
        return None
    m = re.match(r"\s*(\d+(?:\.\d+)?)\s*GT/s", text)
    return float(m.group(1)) if m else None


def parse_link_width(text: str | None) -> int | None:
    n = to_int(text)
    return n if n and 0 < n <= 32 else None  # 0 or 255 mean "no link"/unknown
