"""SpecValidate (entry point ``spec_validate``, order 150): expected spec vs inventory.

Runs on the orchestrator (``runs_on="orchestrator"``: the server runs it inside the
``/result`` of InventoryCheck; the agent's local mode runs it itself). It puts every
diff under ``summary["spec_diffs"]`` and fails on any critical one — the server maps
a failed SpecValidate to the ``SpecMismatch`` event. A host without an expected spec
makes it ``skipped`` with that reason: it checked nothing, so it did not pass. The engine is
:mod:`vetting_core.specdiff`; the format is documented in ``docs/spec.md``.
"""

from __future__ import annotations

import msgspec

from vetting_core import hookimpl
from vetting_core.context import StageContext, StageFailed, StageSkipped
from vetting_core.model import Severity
from vetting_core.records import StageSpec
from vetting_core.specdiff import SpecError, critical, diff_spec, spec_from_dict

NO_SPEC = "no expected spec for this host: nothing to validate (register one with --spec)"


async def run(ctx: StageContext) -> None:
    if not ctx.spec:
        # nothing was checked: skipped with the reason (never "passed")
        ctx.summary["spec_diffs"] = []
        raise StageSkipped(NO_SPEC)
    if not ctx.inventory:
        raise StageFailed("no inventory to validate (InventoryCheck did not produce one)")
    try:
        spec = spec_from_dict(ctx.spec)
    except SpecError as exc:
        raise StageFailed(f"expected spec is invalid: {exc}") from None
    diffs = diff_spec(spec, ctx.inventory)
    ctx.summary["spec_diffs"] = [msgspec.to_builtins(d) for d in diffs]
    counts = {s.value: sum(1 for d in diffs if d.severity is s) for s in Severity}
    ctx.summary["counts"] = counts
    ctx.summary["ignored"] = sum(1 for d in diffs if d.ignored)
    for d in diffs:
        level = "info" if d.ignored else {"critical": "error", "warning": "warning"}.get(d.severity.value, "info")
        ctx.log(f"[{d.severity.value}] {d.field}: {d.message}" + (" (ignored for this host)" if d.ignored else ""), level=level)
    bad = critical(diffs)
    if bad:
        head = "; ".join(f"{d.field}: {d.message}" for d in bad[:5])
        more = f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""
        raise StageFailed(f"{len(bad)} critical spec mismatch(es): {head}{more}")


SPEC_VALIDATE_STAGE = StageSpec(
    name="SpecValidate",
    run=run,
    order=150,
    runs_on="orchestrator",
    description="Compare the inventory with the host's expected spec; critical differences fail the run (SpecMismatch).",
    timeout_s=60.0,
)


@hookimpl
def vetting_stages():
    return [SPEC_VALIDATE_STAGE]
