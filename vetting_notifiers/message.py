"""How a run event reads to a person: one title and one body shared by every notifier.

Kept in one place so that ntfy, Discord, mail and the webhook all say the same thing,
and so that untrusted text (host names, stage reasons) is cleaned once: control
characters are dropped (they break mail headers and push titles) and lengths capped.
"""

from __future__ import annotations

from typing import Any

import msgspec

from vetting_core.events import RunEvent

_VERDICT = {
    "StageFailed": "failed",
    "SpecMismatch": "failed (spec mismatch)",
    "HoldingOpened": "failed, holding for inspection",
    "RunCompleted": "passed",
    "RunFailed": "failed",
    "AgentLost": "agent lost",
    "FirmwareUpdateStarted": "firmware update started",
    "FirmwareUpdateRetrying": "firmware update retrying",
    "FirmwareUpdateCompleted": "firmware updated",
    "FirmwareUpdateFailed": "firmware update failed",
    "FirmwareUpdateCancelled": "firmware update cancelled",
}


def clean(text: Any, limit: int = 500) -> str:
    """One line of printable text at most ``limit`` characters long."""
    s = "" if text is None else str(text)
    s = "".join(ch if ch.isprintable() else " " for ch in s)
    s = " ".join(s.split())
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    return s


def kind_of(event: RunEvent) -> str:
    return getattr(event.kind, "value", str(event.kind))


def severity_of(event: RunEvent) -> str:
    return getattr(event.severity, "value", str(event.severity))


def verdict(event: RunEvent) -> str:
    return _VERDICT.get(kind_of(event), kind_of(event))


def host_label(event: RunEvent) -> str:
    if event.host_name:
        return clean(event.host_name, 120)
    if event.host_id is not None:
        return f"host #{event.host_id}"
    return "unknown host"


def reference(event: RunEvent) -> str:
    """``run 42``, or ``firmware plan 3`` for a firmware update's event."""
    if event.run_id is None and event.plan_id is not None:
        return f"firmware plan {event.plan_id}"
    return f"run {event.run_id}"


def reference_field(event: RunEvent) -> tuple[str, str]:
    """``("Run", "42")`` or ``("Plan", "3")``: the row naming what the event is about."""
    if event.run_id is None and event.plan_id is not None:
        return "Plan", str(event.plan_id)
    return "Run", str(event.run_id)


def title(event: RunEvent) -> str:
    """``Vetting: web-07 failed at SMART (run 42)``-style one-liner."""
    where = f" at {clean(event.stage, 80)}" if event.stage else ""
    return clean(f"Vetting: {host_label(event)} {verdict(event)}{where} ({reference(event)})", 200)


def body(event: RunEvent) -> str:
    """Plain-text body: the message, then the facts, then the link."""
    lines = []
    if event.message:
        lines.append(clean(event.message, 2000))
        lines.append("")
    lines.append(f"Host:     {host_label(event)}")
    if event.run_id is not None:
        lines.append(f"Run:      {event.run_id}")
    if event.plan_id is not None:
        lines.append(f"Plan:     {event.plan_id}")
    if event.stage:
        lines.append(f"Stage:    {clean(event.stage, 80)}")
    lines.append(f"Event:    {kind_of(event)} ({severity_of(event)})")
    if event.state:
        lines.append(f"State:    {clean(event.state, 80)}")
    lines.append(f"When:     {event.ts.isoformat()}")
    if event.url:
        lines.append(f"Details:  {clean(event.url, 500)}")
    return "\n".join(lines)


def event_json(event: RunEvent) -> bytes:
    """The event as JSON (the webhook body's ``event`` member)."""
    return msgspec.json.encode(event)
