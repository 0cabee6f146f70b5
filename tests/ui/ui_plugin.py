"""Test-only plugin of the browser tests: a stage gated by the real wipe probe.

``WipeGate`` runs :func:`vetting_stages.storage.wipe_probe` (real ``blkid``, ``wipefs``
and ``lsblk``) on the files or devices in its ``disks`` parameter, exactly as the
Storage stage does before it writes: data found → the stage asks for a hold with the
findings in ``summary["wipe_probe"]``, until an operator overrides the probe. It writes
nothing itself. Installed for the test server and agents through an entry point
(tests/ui/conftest.py), like any third-party plugin.
"""

from __future__ import annotations

from vetting_core import StageSpec, hookimpl
from vetting_core.context import StageHold
from vetting_stages.storage import wipe_probe


async def wipe_gate(ctx) -> None:
    findings = {d: await wipe_probe(ctx, d) for d in ctx.params.get("disks", [])}
    findings = {d: f for d, f in findings.items() if f}
    ctx.summary["wipe_probe"] = findings
    if findings and not ctx.override_flags.get("wipe"):
        raise StageHold(f"wipe probe found data on {len(findings)} disk(s): {', '.join(sorted(findings))}", found=findings)
    ctx.log("the wipe probe is overridden or found nothing: a real stage would write now")


@hookimpl
def vetting_stages():
    return [StageSpec(name="WipeGate", run=wipe_gate, order=380, profiles=("agenttest",), destructive=True, timeout_s=120)]
