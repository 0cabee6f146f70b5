"""Domain model shared by the server, the agent and the reports.

Plain msgspec Structs mirroring the tables of the seed schema. They carry no
behaviour: the state machine, the threshold engine and the spec-diff engine
operate on them. Timestamps are timezone-aware UTC ``datetime`` values.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Any

import msgspec
from msgspec import Meta

INT64_MAX = 2**63 - 1  # BIGINT columns (PostgreSQL), SQLite's INTEGER
INT32_MAX = 2**31 - 1  # INTEGER columns on PostgreSQL (ordinals, attempts)
Count = Annotated[int, Meta(ge=0, le=INT64_MAX)]
Ordinal = Annotated[int, Meta(ge=0, le=INT32_MAX)]


class Verdict(str, enum.Enum):
    """State of a stage or sub-step. ``hold`` means "stop and wait for an operator".

    ``failed`` is a finding about the machine (the hardware, its firmware, its spec);
    ``cannot_run`` is not: the test could not run *here* (a tool is not installed, the
    agent lacks a permission), so nothing is known about what it would have tested.
    Whether that stops the run is the run's policy (:func:`stops_run`).
    """

    pending = "pending"
    running = "running"
    passed = "passed"
    failed = "failed"
    skipped = "skipped"
    cannot_run = "cannot_run"
    hold = "hold"

    @property
    def terminal(self) -> bool:
        return self in (Verdict.passed, Verdict.failed, Verdict.skipped, Verdict.cannot_run)

    @property
    def label(self) -> str:
        """How a person reads it (``could not run``, ``passed``...)."""
        return "could not run" if self is Verdict.cannot_run else self.value


def stops_run(verdict: Verdict, *, live_image: bool) -> bool:
    """Whether a stage that ended with ``verdict`` stops (fails) the run.

    ``failed`` and ``hold`` always do. ``cannot_run`` does on a live image (PXE, or an
    agent connected by hand to a booted image): the image is built to carry every tool
    the stages need, so a missing one is a broken image and the machine is not proven
    healthy. In host mode and local mode (an installed machine, whose packages are the
    owner's) the run goes on and ends ``incomplete`` instead of passed.
    """
    if verdict in (Verdict.failed, Verdict.hold):
        return True
    return verdict is Verdict.cannot_run and live_image


def completed_result(verdicts: Iterable[Verdict | str]) -> str:
    """``runs.result`` of a run whose pipeline got to its end: ``pass``, or
    ``incomplete`` when a stage could not run (nothing failed, but not everything was
    tested)."""
    return "incomplete" if any(Verdict(v) is Verdict.cannot_run for v in verdicts) else "pass"


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
    origin: str | None = None  # the command (or API request) that started the run


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
