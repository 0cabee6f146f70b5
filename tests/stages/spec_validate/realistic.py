"""A realistic expected spec and matching inventory: a 2-socket GPU server with 8 NVMe
data disks, 2 SATA boot disks, 8 H100 GPUs, 32 DIMMs. Shared by the spec-diff tests and
``docs/spec.md`` (whose example is this spec)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

DOCS_SPEC = Path(__file__).resolve().parents[3] / "docs" / "spec.md"


def docs_example_yaml() -> str:
    """The first ```yaml block of docs/spec.md: the documented complete example."""
    text = DOCS_SPEC.read_text()
    m = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert m, "docs/spec.md has no ```yaml example"
    return m.group(1)


def inventory() -> dict:
    dimms = [
        {"locator": f"CPU{s}_DIMM_{c}{n}", "size_gib": 64.0, "speed_mts": 4800, "configured_speed_mts": 4800,
         "type": "DDR5", "manufacturer": "Samsung", "part_number": "M321R8GA0BB0-CQKZJ", "serial": f"S{s}{c}{n}"}
        for s in (1, 2) for c in "ABCDEFGH" for n in (1, 2)
    ]
    nvme = [
        {"name": f"nvme{i}n1", "path": f"/dev/nvme{i}n1", "model": "SAMSUNG MZQL27T6HBLA-00A07", "serial": f"S6CKNA0W{i:05d}",
         "size_bytes": 7681501126656, "rotational": False, "transport": "nvme", "removable": False, "firmware": "GDC5602Q"}
        for i in range(8)
    ]
    boot = [
        {"name": n, "path": f"/dev/{n}", "model": "Micron_5400_MTFDDAV480TGA", "serial": f"2233{n}", "size_bytes": 480103981056,
         "rotational": False, "transport": "sata", "removable": False, "firmware": "D3MU001"}
        for n in ("sda", "sdb")
    ]
    usb = [{"name": "sdc", "path": "/dev/sdc", "model": "Ultra Fit", "size_bytes": 30752636928, "transport": "usb", "removable": True}]
    nics = [
        {"name": f"ens{i}np0", "mac": f"b8:3f:d2:00:00:0{i}", "driver": "mlx5_core", "speed_mbps": 200000, "max_speed_mbps": 200000,
         "link": "up", "pci_address": f"0000:{0x1a + i:02x}:00.0", "firmware": "28.39.1002"}
        for i in range(2)
    ] + [
        {"name": f"eno{i}", "mac": f"3c:ec:ef:00:00:0{i}", "driver": "ice", "speed_mbps": 25000, "max_speed_mbps": 25000,
         "link": "up", "pci_address": f"0000:3{i}:00.0", "firmware": "4.20 0x8001778b 1.3346.0"}
        for i in range(2)
    ] + [{"name": "docker0", "mac": "02:42:00:00:00:01", "driver": "bridge", "virtual": True, "link": "down"}]
    gpu_bus = ["18", "2a", "3a", "5d", "9a", "ab", "ba", "db"]
    gpus = [
        {"index": i, "name": "NVIDIA H100 80GB HBM3", "uuid": f"GPU-{i}", "vbios": "96.00.74.00.0D", "driver": "550.54.15",
         "memory_mib": 81559, "pci_address": f"0000:{b}:00.0"}
        for i, b in enumerate(gpu_bus)
    ]
    pci = [
        {"address": f"0000:{b}:00.0", "vendor_id": "10de", "device_id": "2330", "class_id": "030200",
         "description": "NVIDIA Corporation GH100 [H100 SXM5 80GB]", "driver": "nvidia",
         "current_speed_gts": 32.0, "max_speed_gts": 32.0, "current_width": 16, "max_width": 16}
        for b in gpu_bus
    ] + [
        {"address": f"0000:{0x1a + i:02x}:00.0", "vendor_id": "15b3", "device_id": "1021", "class_id": "020000",
         "description": "Mellanox Technologies MT2910 Family [ConnectX-7]", "driver": "mlx5_core",
         "current_speed_gts": 32.0, "max_speed_gts": 32.0, "current_width": 16, "max_width": 16}
        for i in range(2)
    ]
    return {
        "cpu": {"model": "Intel(R) Xeon(R) Platinum 8480+", "vendor": "GenuineIntel", "sockets": 2, "cores": 112,
                "threads": 224, "microcode": "0x2b000571", "flags": []},
        "memory": {"total_gib": 2048.0, "os_total_gib": 2015.6, "dimms": dimms},
        "disks": nvme + boot + usb,
        "nics": nics,
        "pci": pci,
        "gpus": gpus,
        "bmc": {"manufacturer": "Supermicro", "firmware": "01.03.16", "ipmi_version": "2.0"},
        "system": {"vendor": "Supermicro", "product": "SYS-821GE-TNHR", "board_product": "X13DEG-OAD",
                   "bios_vendor": "American Megatrends International, LLC.", "bios_version": "2.1", "bios_date": "03/08/2024"},
        "unavailable": {},
    }


def fresh() -> dict:
    return copy.deepcopy(inventory())
