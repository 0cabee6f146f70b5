""""Update and re-vet": fix a run's firmware mismatches through the BMC, then vet again.

A run fails on firmware when its Firmware stage (or SpecValidate) records critical
``firmware.*`` spec diffs: a component at a version outside the spec's allowed list.
When the artifact store holds an image of that component at an allowed version, and
the host has a firmware provider, the failure is fixable without another tool:

- at the failure itself (same transaction as the run's move to ``Failed``) an event
  ``firmware.remediation_offered`` names what would be installed, so the run's report
  (section "Firmware remediation") and history say so;
- ``GET /api/v1/runs/{id}/firmware-remediation`` shows the offer now (images added
  since count), ``POST`` starts it: a one-host plan (the images, ``max_concurrent`` 1,
  ``vet_after_update`` with the failed run's profile, stages and destructiveness) that
  updates through the BMC and then starts a new vetting run. The failed run is
  released first (a hold would otherwise keep the host for hours): choosing to update
  is choosing to let go of it; the server's clean-up after it (boot override cleared,
  host powered off) happens before the update starts;
- with ``firmware.auto_remediate: true`` the plan is started by that policy at once.
"""

from __future__ import annotations

from typing import Any

import structlog

from vetting_core.statemachine import FAILED

from ..errors import conflict, not_found
from ..runs import listing
from ..runs.service import jload
from ..runtime import Runtime, Unit
from .plans import ArtifactRef, PlanDocument, Policy, Vet
from .report import OFFER_EVENT

log = structlog.get_logger()


def mismatch(diff: dict[str, Any]) -> tuple[str, list[str]]:
    """(component, allowed versions) of a ``firmware.*`` spec diff (pure)."""
    component = diff["field"].split(".", 1)[1].split("[", 1)[0]
    allowed = [v.strip() for v in str(diff["expected"] or "").split(" or ") if v.strip()]
    return component, allowed


async def offers(rt: Runtime, run_id: int, db: Any = None) -> dict[str, Any]:
    """The remediation of run ``run_id``, as a :class:`.schemas.RemediationOut` dict."""
    db = db or rt.db
    run = await listing.run_row(db, run_id)
    if run is None:
        raise not_found(f"run {run_id} not found")
    host = await db.fetchrow("SELECT * FROM hosts WHERE id = $1", int(run["host_id"]))
    diffs = await db.fetch("SELECT * FROM spec_diffs WHERE run_id = $1 AND severity = 'critical' AND field LIKE 'firmware.%' "
                           "ORDER BY id", run_id)
    out: dict[str, Any] = {"run_id": run_id, "host_id": int(run["host_id"]), "host_name": run["host_name"],
                           "available": False, "why_not": None, "offers": [], "plan_ids": []}
    out["plan_ids"] = [int(r["id"]) for r in await db.fetch(
        "SELECT id FROM firmware_plans WHERE source_run_id = $1 ORDER BY id", run_id)]
    seen = set()
    for d in diffs:
        if d["ignored"]:
            continue
        component, allowed = mismatch(d)
        key = (component, tuple(allowed))
        if key in seen:
            continue
        seen.add(key)
        rows = await db.fetch("SELECT * FROM firmware_artifacts WHERE component = $1 ORDER BY id DESC", component)
        art = next((a for a in rows if a["version"] in allowed), None)
        out["offers"].append({"component": component, "field": d["field"], "actual": d["actual"], "expected": allowed,
                              "artifact": art})
    if run["result"] != "fail":
        out["why_not"] = f"run {run_id} has not failed (it is {run['state']})"
    elif not out["offers"]:
        out["why_not"] = f"run {run_id} has no firmware version mismatch to fix"
    elif any(o["artifact"] is None for o in out["offers"]):
        missing = ", ".join(f"{o['component']} {' or '.join(o['expected'])}" for o in out["offers"] if o["artifact"] is None)
        out["why_not"] = f"no image in the artifact store for {missing} (vetting firmware artifact add)"
    elif rt.firmware.provider_kind(host) is None:
        out["why_not"] = f"host {host['name']} has no firmware provider (PUT /api/v1/firmware/hosts/{host['id']}/provider)"
    else:
        out["available"] = True
    return out


async def on_run_failed(rt: Runtime, u: Unit, run: dict[str, Any]) -> None:
    """Called in the transaction that fails ``run``: record the offer (for the report)
    and, under ``firmware.auto_remediate``, start it once the transaction commits."""
    o = await offers(rt, int(run["id"]), db=u.tx)
    fixes = [x for x in o["offers"] if x["artifact"] is not None]
    if not fixes:
        return
    what = "; ".join(f"{x['component']} {x['actual']} → {x['artifact']['version']} (artifact {x['artifact']['id']}, "
                     f"{x['artifact']['filename']})" for x in fixes)
    how = (f"POST /api/v1/runs/{run['id']}/firmware-remediation or `vetting firmware remediate {run['id']}`"
           if o["available"] else o["why_not"])
    await u.event(OFFER_EVENT, f"update and re-vet: {what}; {how}", run_id=int(run["id"]), host_id=int(run["host_id"]),
                  data={"offers": [{"component": x["component"], "actual": x["actual"], "artifact_id": int(x["artifact"]["id"]),
                                    "version": x["artifact"]["version"]} for x in fixes], "available": o["available"]})
    if o["available"] and rt.settings.firmware.auto_remediate:
        u.fx.after.append(lambda: remediate(rt, int(run["id"]), actor="policy firmware.auto_remediate"))


async def remediate(rt: Runtime, run_id: int, *, actor: str, approval_required: bool = False, reason: str = "") -> dict[str, Any]:
    o = await offers(rt, run_id)
    if not o["available"]:
        raise conflict(f"run {run_id}: update and re-vet is not available: {o['why_not']}", why_not=o["why_not"])
    active = await rt.db.fetchval(
        "SELECT id FROM firmware_plans WHERE source_run_id = $1 AND state IN ('draft', 'approved', 'running', 'paused')", run_id)
    if active:
        raise conflict(f"run {run_id} is already being remediated by firmware plan {active}", plan_id=int(active))
    run = await rt.db.fetchrow("SELECT * FROM runs WHERE id = $1", run_id)
    if run["state"] in FAILED:  # no hold will be wanted: the host is handed to the update
        await rt.service.operator_action(run_id, "release", actor=actor, reason="released for a firmware update and re-vet")
    arts = {int(x["artifact"]["id"]): x["artifact"] for x in o["offers"]}
    doc = PlanDocument(
        name=f"update and re-vet run {run_id} on {o['host_name']}"[:200],
        targets=[o["host_name"]],
        artifacts=[ArtifactRef(component=a["component"], version=a["version"], sha256=a["sha256"]) for a in arts.values()],
        policy=Policy(max_concurrent=1, approval_required=approval_required, stop_on_failure=True,
                      vet_after_update=Vet(profile=run["profile"], non_destructive=bool(run["non_destructive"]),
                                           stages=jload(run["requested_stages_json"]))),
    )
    plan = await rt.firmware.create_plan(doc, actor=actor, source_run_id=run_id)
    if reason:
        async with rt.unit() as u:
            await u.event("firmware.remediation", f"update and re-vet of run {run_id} by {actor}: {reason}",
                          run_id=run_id, plan_id=int(plan["id"]), actor=actor)
    if not approval_required:
        plan = await rt.firmware.act(int(plan["id"]), "start", actor=actor)
    return plan
