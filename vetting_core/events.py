"""Run events: what the orchestrator tells observers (notifiers, the SSE hub, audit)."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import msgspec

from .model import Severity


class RunEventKind(str, enum.Enum):
    StageFailed = "StageFailed"
    SpecMismatch = "SpecMismatch"
    HoldingOpened = "HoldingOpened"
    RunCompleted = "RunCompleted"
    RunFailed = "RunFailed"
    AgentLost = "AgentLost"
    # a host's firmware update in a campaign (vetting_server.firmware): one per transition
    FirmwareUpdateStarted = "FirmwareUpdateStarted"
    FirmwareUpdateRetrying = "FirmwareUpdateRetrying"
    FirmwareUpdateCompleted = "FirmwareUpdateCompleted"
    FirmwareUpdateFailed = "FirmwareUpdateFailed"
    FirmwareUpdateCancelled = "FirmwareUpdateCancelled"


DEFAULT_SEVERITY: dict[RunEventKind, Severity] = {
    RunEventKind.StageFailed: Severity.critical,
    RunEventKind.SpecMismatch: Severity.critical,
    RunEventKind.HoldingOpened: Severity.critical,
    RunEventKind.RunCompleted: Severity.info,
    RunEventKind.RunFailed: Severity.critical,
    RunEventKind.AgentLost: Severity.critical,
    RunEventKind.FirmwareUpdateStarted: Severity.info,
    RunEventKind.FirmwareUpdateRetrying: Severity.warning,
    RunEventKind.FirmwareUpdateCompleted: Severity.info,
    RunEventKind.FirmwareUpdateFailed: Severity.critical,
    RunEventKind.FirmwareUpdateCancelled: Severity.warning,
}


class RunEvent(msgspec.Struct, kw_only=True, frozen=True):
    """One run event, as delivered to every observer and notifier.

    ``url`` links to the run in the operator UI when the server knows its public URL.
    A firmware update's events carry ``plan_id`` (the campaign) and no ``run_id``;
    ``stage`` is then the update's phase.
    """

    kind: RunEventKind
    severity: Severity
    ts: datetime
    run_id: int | None = None
    host_id: int | None = None
    host_name: str = ""
    stage: str | None = None
    state: str | None = None
    message: str = ""
    url: str | None = None
    data: dict[str, Any] = {}
    plan_id: int | None = None
