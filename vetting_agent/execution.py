"""Running one planned stage: shared by the connected modes and local mode.

The agent never calls a stage plugin directly: it builds a :class:`StageContext` with
:func:`vetting_core.context.build_context` (which hands InventoryCheck the registered
probes) and goes through :func:`vetting_core.context.execute_stage`, which turns "does
not apply", exceptions and timeouts into a verdict. What the agent adds here: a stage
whose plugin is not installed becomes a ``failed`` result naming the installed ones.
"""

from __future__ import annotations

import dataclasses

from vetting_core.context import StageContext, execute_stage, utcnow
from vetting_core.model import Verdict
from vetting_core.plugins import Registry, UnknownNameError
from vetting_core.protocol import PlannedStage, StageResult


def missing_plugin_result(name: str, error: Exception) -> StageResult:
    now = utcnow()
    return StageResult(
        stage=name,
        verdict=Verdict.failed,
        reason=f"stage plugin {name!r} is not installed on this agent: {error}",
        started_at=now,
        completed_at=now,
    )


async def run_planned(registry: Registry, planned: PlannedStage, ctx: StageContext) -> StageResult:
    """Run one planned stage with the plan's timeout; never raises for a stage problem."""
    try:
        spec = registry.stage(planned.name)
    except UnknownNameError as exc:
        ctx.log(f"failed: stage plugin {planned.name!r} is not installed on this agent", level="error")
        return missing_plugin_result(planned.name, exc)
    if planned.timeout_s and planned.timeout_s != spec.timeout_s:
        spec = dataclasses.replace(spec, timeout_s=planned.timeout_s)
    return await execute_stage(spec, ctx)
