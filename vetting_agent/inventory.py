"""Collecting the inventory document outside a run's InventoryCheck result.

Used by ``vetting-agent inventory`` and by a resumed run whose InventoryCheck finished
in an earlier boot (later stages need the document to decide whether they apply).
It runs whatever stage is registered as ``InventoryCheck`` with the registered
probes, through the same :func:`execute_stage` path, and keeps only the document.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from vetting_core.context import MemorySink, build_context, stage_workdir
from vetting_core.plugins import Registry
from vetting_core.protocol import PlannedStage

from .execution import run_planned

INVENTORY_STAGE = "InventoryCheck"


async def collect(registry: Registry, workdir: Path | None = None) -> dict[str, Any]:
    if INVENTORY_STAGE not in registry.stages:
        return {}
    planned = PlannedStage(name=INVENTORY_STAGE, ordinal=0, timeout_s=registry.stages[INVENTORY_STAGE].timeout_s)
    with tempfile.TemporaryDirectory(prefix="vetting-inventory-") as tmp:
        ctx = build_context(
            planned.name, registry=registry, sink=MemorySink(),
            workdir=stage_workdir(workdir or Path(tmp), planned.name, planned.ordinal),
        )
        result = await run_planned(registry, planned, ctx)
    return result.inventory or {}
