"""NVIDIA Xid events from the kernel log (``NVRM: Xid (PCI:0000:3b:00): 79, ...``).

An Xid is the driver reporting a GPU error (79 fell off the bus, 48/94/95 ECC,
63/64 row remapping, 92 high single-bit rate, 119/120 GSP...). The stage counts Xids
per GPU before and after the burn; any new one is a finding.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

_XID = re.compile(
    r"NVRM: Xid \(PCI:(?P<pci>[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2})(?:[^)]*)\): (?P<xid>\d+), ?(?P<msg>.*)$"
)

# Xids that mean the GPU (not the application) is at fault; from NVIDIA's Xid catalogue.
HARDWARE_XIDS = frozenset({48, 56, 57, 58, 62, 63, 64, 74, 79, 92, 94, 95, 119, 120, 121, 140, 143})


@dataclass(frozen=True)
class XidEvent:
    pci: str  # 0000:3b:00 (domain:bus:device, lower case)
    xid: int
    message: str


def parse(text: str) -> list[XidEvent]:
    out = []
    for line in text.splitlines():
        m = _XID.search(line)
        if m:
            out.append(XidEvent(pci=m["pci"].lower(), xid=int(m["xid"]), message=m["msg"].strip()))
    return out


def pci_key(bus_id: str) -> str:
    """NVML's ``00000000:3B:00.0`` → ``0000:3b:00`` as Xid lines spell it."""
    bus_id = bus_id.lower()
    dom, _, rest = bus_id.partition(":")
    bus, _, devfn = rest.partition(":")
    return f"{dom[-4:]}:{bus}:{devfn.split('.')[0]}"


def count_by_gpu(events: list[XidEvent]) -> Counter[str]:
    return Counter(e.pci for e in events)
