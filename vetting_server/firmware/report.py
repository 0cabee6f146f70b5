"""Report section "Firmware remediation": the run's "update and re-vet" offer.

When a run fails on firmware versions that an image in the artifact store fixes, the
server records a ``firmware.remediation_offered`` event in the same transaction as the
failure (:mod:`.remediation`), before the report is written; this section puts that
offer, and how to take it, at the top of the report. Registered through the ``vetting``
entry-point group (entry point ``firmware_report``); imports only ``vetting_core``.
"""

from __future__ import annotations

from html import escape
from typing import Any

from vetting_core import ReportSection, ReportSectionSpec, hookimpl

OFFER_EVENT = "firmware.remediation_offered"


def render(report: dict[str, Any]) -> ReportSection | None:
    offers = [e for e in report.get("events") or [] if e.get("kind") == OFFER_EVENT]
    if not offers:
        return None
    message = str(offers[-1].get("message") or "")
    run_id = (report.get("run") or {}).get("id")
    return ReportSection(
        title="Firmware remediation: update and re-vet",
        html=f"<p>{escape(message)}</p><p>The firmware is updated through the host's BMC, then a new vetting "
             f"run starts: <code>vetting firmware remediate {escape(str(run_id))}</code></p>",
        data={"offer": message, "run_id": run_id},
    )


@hookimpl
def vetting_report_sections():
    return [ReportSectionSpec(name="firmware_remediation", render=render, order=50)]
