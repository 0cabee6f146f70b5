"""Domain model shared by the server, the agent and the reports.

Plain msgspec Structs mirroring the tables of the seed schema. They carry no
behaviour: the state machine, the threshold engine and the spec-diff engine
operate on them. Timestamps are timezone-aware UTC ``datetime`` values.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Any

import msgspec
from msgspec import Meta

INT64_MAX = 2**63 - 1  # BIGINT columns (PostgreSQL), SQLite's INTEGER
INT32_MAX = 2**31 - 1  # INTEGER columns on PostgreSQL (ordinals, attempts)
Count = Annotated[int, Meta(ge=0, le=INT64_MAX)]
Ordinal = Annotated[int, Meta(ge=0, le=INT32_MAX)]


class Verdict(str, enum.Enum):
    """State of a stage or sub-step. ``hold`` means "stop and wait for an operator"."""

    pending = "pending"
    running = "running"
    passed = "passed"
    failed = "failed"
    skipped = "skipped"
    hold = "hold"

    @property
    def terminal(self) -> bool:
        return self in (Verdict.passed, Verdict.failed, Verdict.skipped)


class Severity(str, enum.Enum):
    critical = "critical"
    warning = "warning"
    info = "info"


class Host(msgspec.Struct, kw_only=True):
    id: int | None = None
    name: str
    mac: str
    boot_provider: str = "manual"
    boot_config: dict[str, Any] = {}
    expected_spec_yaml: str = ""
    notes: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None
    last_seen_at: datetime | None = None


class Run(msgspec.Struct, kw_only=True):
    id: int | None = None
    host_id: int
    state: str
    result: str | None = None
    failed_stage: str | None = None
    reason: str | None = None
    current_stage: str | None = None
    profile: str = "quick"
    non_destructive: bool = False
    override_flags: dict[str, Any] = {}
    hold_ip: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    report_path: str | None = None


class Stage(msgspec.Struct, kw_only=True):
    id: int | None = None
    run_id: int | None = None
    name: str
    ordinal: int
    state: Verdict = Verdict.pending
    reason: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    summary: dict[str, Any] = {}


class SubStep(msgspec.Struct, kw_only=True):
    """A finer unit inside a stage: one disk, one NIC, one GPU, one stressor."""

    stage_name: str
    ordinal: Ordinal
    name: str
    state: Verdict = Verdict.pending
    reason: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    summary: dict[str, Any] = {}


class Measurement(msgspec.Struct, kw_only=True, array_like=True, gc=False):
    """One sample. ``array_like`` keeps the wire form compact: sensor batches are hot.

    ``value`` is numeric; a textual sample (a firmware version, a link state) sets
    ``text`` and leaves ``value`` as ``None``.

    ``gc=False``: its fields are atomic (datetime, str, float, None), so a sample can
    never be part of a reference cycle, and the garbage collector need not track the
    hundreds of thousands a busy server holds in flight.
    """

    ts: datetime
    stage: str
    kind: str
    key: str
    value: float | None
    unit: str = ""
    text: str | None = None


class SpecDiff(msgspec.Struct, kw_only=True):
    field: str
    expected: str | None
    actual: str | None
    severity: Severity
    message: str = ""
    ignored: bool = False


class Artifact(msgspec.Struct, kw_only=True):
    kind: str
    path: str
    sha256: str
    size_bytes: Count
    stage: str | None = None


class ThresholdRule(msgspec.Struct, kw_only=True, frozen=True):
    """``(stage glob, kind, key glob, op, threshold, nominal, unit, severity, source)``.

    ``threshold`` is a number for numeric operators and a string for ``regex``
    (and for ``eq``/``ne`` against text samples).
    """

    stage: str = "*"
    kind: str
    key: str = "*"
    op: str
    threshold: float | str
    nominal: float = 0.0
    unit: str = ""
    severity: Severity = Severity.critical
    source: str = "profile"
    id: int | None = None


class ThresholdEvaluation(msgspec.Struct, kw_only=True):
    rule_id: int | None
    stage: str
    kind: str
    key: str
    ts: datetime
    observed: float | str | None
    passed: bool
    severity: Severity = Severity.critical


class FirmwareSnapshot(msgspec.Struct, kw_only=True):
    component: str  # bios, bmc, nic, hba, microcode, nvme_fw, gpu_vbios, ...
    identifier: str
    version: str
    vendor: str = ""
    raw: dict[str, Any] = {}


class Event(msgspec.Struct, kw_only=True):
    """A row of the event log: run events, notifier attempts and operator actions."""

    ts: datetime
    kind: str
    level: str = "info"
    message: str = ""
    run_id: int | None = None
    host_id: int | None = None
    actor: str | None = None
    data: dict[str, Any] = {}


class RunRecord(msgspec.Struct, kw_only=True):
    """Everything known about one run: the input of the report builders.

    The server assembles it from the database at Reporting; the agent's local mode
    assembles it in memory. ``measurements`` may be large (millions of samples);
    report builders summarise and downsample, never copy them whole.
    """

    host: Host
    run: Run
    stages: list[Stage] = []
    substeps: list[SubStep] = []
    measurements: list[Measurement] = []
    thresholds: list[ThresholdRule] = []
    evaluations: list[ThresholdEvaluation] = []  # breaches at least; passes optional
    spec_diffs: list[SpecDiff] = []
    firmware: list[FirmwareSnapshot] = []
    artifacts: list[Artifact] = []
    inventory: dict[str, Any] = {}
    events: list[Event] = []
    log_path: str | None = None
