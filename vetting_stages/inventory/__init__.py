"""Built-in inventory probes and the InventoryCheck stage (entry point ``inventory``).

Probes: CPU, memory/DIMMs, disks, NICs, PCIe links, GPUs (NVML), BMC, system/BIOS.
InventoryCheck (order 100) runs every registered probe and stores the merged
document with the run; SpecValidate (order 150) compares it with the expected spec.
"""

from __future__ import annotations

from vetting_core import hookimpl
from vetting_core.records import StageSpec

from .probes import BUILTIN_PROBES
from .stage import collect_inventory, run

__all__ = ["BUILTIN_PROBES", "INVENTORY_STAGE", "collect_inventory"]

INVENTORY_STAGE = StageSpec(
    name="InventoryCheck",
    run=run,
    order=100,
    description="Collect CPU, memory, disks, NICs, PCIe links, GPUs, BMC and BIOS inventory.",
    timeout_s=300.0,
)


@hookimpl
def vetting_probes():
    return list(BUILTIN_PROBES)


@hookimpl
def vetting_stages():
    return [INVENTORY_STAGE]
