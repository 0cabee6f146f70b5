"""InventoryCheck: run every registered probe and merge the fragments.

The stage cannot see the plugin registry (stages only get a :class:`StageContext`),
so the runner hands the registered probes over as ``ctx.probes``; when it does not
(a plugin author's test, an old runner) the built-in probes are used and the log
says so. :func:`collect_inventory` is also usable on its own (``vetting-agent
inventory`` prints it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import anyio
import structlog

from vetting_core.context import StageContext
from vetting_core.inventory import merge_fragments
from vetting_core.records import ProbeSpec

from .probes import BUILTIN_PROBES

log = structlog.get_logger()


async def _collect_one(probe: ProbeSpec) -> dict[str, Any]:
    """One probe's fragment; a crash or a timeout becomes ``unavailable``, never raises."""
    sections = probe.sections or (probe.name,)
    try:
        with anyio.fail_after(probe.timeout_s):
            fragment = await probe.collect()
        if not isinstance(fragment, dict):
            raise TypeError(f"collect() returned {type(fragment).__name__}, not a dict")
        return fragment
    except TimeoutError:
        why = f"probe {probe.name!r} timed out after {probe.timeout_s:.0f}s"
    except Exception as exc:
        why = f"probe {probe.name!r} crashed: {type(exc).__name__}: {exc}"
    log.warning("inventory.probe_failed", probe=probe.name, reason=why)
    return {"unavailable": {s: why for s in sections}}


async def collect_inventory(probes: Sequence[ProbeSpec]) -> dict[str, Any]:
    """Run ``probes`` concurrently and merge their fragments (probe order kept)."""
    results: list[tuple[str, dict[str, Any]] | None] = [None] * len(probes)

    async def one(i: int, probe: ProbeSpec) -> None:
        results[i] = (probe.name, await _collect_one(probe))

    async with anyio.create_task_group() as tg:
        for i, probe in enumerate(probes):
            tg.start_soon(one, i, probe)
    return merge_fragments([r for r in results if r is not None])


def summarize(doc: dict[str, Any]) -> dict[str, Any]:
    cpu = doc.get("cpu") or {}
    mem = doc.get("memory") or {}
    return {
        "cpu": f"{cpu.get('sockets', 0)} × {cpu.get('model', '?')} ({cpu.get('cores', 0)} cores, {cpu.get('threads', 0)} threads)" if cpu else None,
        "memory_gib": mem.get("total_gib"),
        "dimms": len(mem.get("dimms") or []),
        "disks": len(doc.get("disks") or []),
        "nics": len(doc.get("nics") or []),
        "pci_devices": len(doc.get("pci") or []),
        "gpus": len(doc.get("gpus") or []),
        "unavailable": dict(doc.get("unavailable") or {}),
    }


async def run(ctx: StageContext) -> None:
    probes = ctx.probes
    if probes is None:
        ctx.log("no probes handed over by the runner: using the built-in probes")
        probes = list(BUILTIN_PROBES)
    ctx.progress(0.0, f"running {len(probes)} probes")
    doc = await collect_inventory(probes)
    ctx.inventory_out = doc
    ctx.summary.update(summarize(doc))
    for section, reason in sorted(doc["unavailable"].items()):
        ctx.log(f"inventory section {section} unavailable: {reason}", level="warning")
    ctx.save_text("inventory", "inventory.json", json.dumps(doc, indent=2, sort_keys=True, default=str))
    ctx.progress(1.0, "inventory collected")
