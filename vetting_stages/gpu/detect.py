"""Is there an NVIDIA GPU? Answered from the inventory, then from PCI sysfs.

``applies()`` must be cheap and synchronous, and must say *why* the stage does not
apply: the reason ends up in the report ("no NVIDIA GPU found (…)").
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

NVIDIA_VENDOR = "0x10de"
DISPLAY_CLASSES = ("0x0300", "0x0302", "0x0380")  # VGA, 3D controller, other display


def pci_gpus(root: str | Path = "/sys/bus/pci/devices") -> list[str]:
    """PCI addresses of NVIDIA display/3D-controller functions."""
    out = []
    for dev in sorted(Path(root).glob("*")):
        try:
            vendor = (dev / "vendor").read_text().strip().lower()
            klass = (dev / "class").read_text().strip().lower()
        except OSError:
            continue
        if vendor == NVIDIA_VENDOR and klass[:6] in DISPLAY_CLASSES:
            out.append(dev.name)
    return out


def applies(inventory: Mapping[str, Any], *, pci_root: str | Path = "/sys/bus/pci/devices") -> str | None:
    gpus = [g for g in inventory.get("gpus", []) or [] if isinstance(g, dict)]
    if gpus:
        return None
    pci = [
        d for d in inventory.get("pci", []) or []
        if isinstance(d, dict)
        and str(d.get("vendor_id", "")).lower().removeprefix("0x") == "10de"
        and str(d.get("class_id", "")).lower().removeprefix("0x")[:4] in ("0300", "0302", "0380")
    ]
    if pci:
        return None
    live = pci_gpus(pci_root)
    if live:
        return None
    where = "inventory lists no GPU" if inventory else "no inventory"
    return f"no NVIDIA GPU found ({where}; no PCI device with vendor 10de and a display class)"
