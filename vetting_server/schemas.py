"""Request and response bodies of the operator API (msgspec Structs, in the OpenAPI doc).

The agent protocol's bodies live in :mod:`vetting_core.protocol`; these are the
operator-facing ones. Output Structs are built from database rows by
:mod:`vetting_server.api.views`.

This module stays at ``vetting_server.schemas``: its path is part of the OpenAPI
document (two bodies are named ``ArtifactOut``, so msgspec names this one
``vetting_server.schemas.ArtifactOut``, and components are ordered by that name).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Generic, TypeVar

import msgspec
from msgspec import Meta

from vetting_core.model import INT64_MAX

T = TypeVar("T")


class LoginRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    username: Annotated[str, Meta(max_length=256)]
    password: Annotated[str, Meta(max_length=1024)]
    token_name: Annotated[str, Meta(max_length=100)] = "login"


class TokenReply(msgspec.Struct, kw_only=True):
    token: str
    user: str
    name: str


class HostCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    mac: str
    boot_provider: str = "manual"
    boot_config: dict[str, Any] = {}
    expected_spec_yaml: str = ""
    notes: str = ""


class HostUpdate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str | None = None
    mac: str | None = None
    boot_provider: str | None = None
    boot_config: dict[str, Any] | None = None
    expected_spec_yaml: str | None = None
    notes: str | None = None


class HostOut(msgspec.Struct, kw_only=True):
    id: int
    name: str
    mac: str
    boot_provider: str
    boot_config: dict[str, Any]
    expected_spec_yaml: str
    notes: str
    created_at: datetime
    updated_at: datetime
    last_seen_at: datetime | None = None
    last_seen_ip: str | None = None
    agent_version: str | None = None
    agent_token: str | None = None  # host-mode agent token: only in the create/rotate reply


class RunStart(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    host_id: Annotated[int, Meta(ge=0, le=INT64_MAX)] | msgspec.UnsetType = msgspec.UNSET
    host: str | msgspec.UnsetType = msgspec.UNSET  # host name, instead of host_id
    profile: str | None = None  # None: the server's runs.default_profile
    non_destructive: bool = False
    stages: Annotated[list[str], Meta(max_length=1000)] | None = None  # run only these stages of the profile

    # exactly one of them (the OpenAPI document says ``oneOf``; both or neither: 422)
    one_of: ClassVar[tuple[str, ...]] = ("host_id", "host")


class RunOut(msgspec.Struct, kw_only=True):
    id: int
    host_id: int
    host_name: str
    state: str
    result: str | None
    profile: str
    non_destructive: bool
    current_stage: str | None
    failed_stage: str | None
    reason: str | None
    started_at: datetime
    state_changed_at: datetime
    completed_at: datetime | None = None
    last_heartbeat_at: datetime | None = None
    hold_ip: str | None = None
    report_path: str | None = None
    boot_message: str | None = None
    actor: str | None = None
    origin: str | None = None  # the command (or API request) that started the run


class RunCreated(msgspec.Struct, kw_only=True):
    run: RunOut
    agent_token: str  # shown once
    ipxe_url: str
    kernel_params: str


class StageOut(msgspec.Struct, kw_only=True):
    name: str
    ordinal: int
    state: str
    runs_on: str
    destructive: bool
    timeout_s: float
    attempt: int
    reason: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    summary: dict[str, Any] = {}


class SubStepOut(msgspec.Struct, kw_only=True):
    stage_name: str
    ordinal: int
    name: str
    state: str
    reason: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    summary: dict[str, Any] = {}


class SpecDiffOut(msgspec.Struct, kw_only=True):
    field: str
    expected: str | None
    actual: str | None
    severity: str
    message: str = ""
    stage: str | None = None
    ignored: bool = False


class ThresholdOut(msgspec.Struct, kw_only=True):
    id: int
    stage: str
    kind: str
    key: str
    op: str
    threshold: float | str | None
    nominal: float
    unit: str
    severity: str
    source: str


class TallyOut(msgspec.Struct, kw_only=True):
    threshold_id: int
    stage: str
    key: str
    passed: int
    breaches: int
    min_observed: float | None
    max_observed: float | None
    first_ts: datetime
    last_ts: datetime


class BreachOut(msgspec.Struct, kw_only=True):
    threshold_id: int
    stage: str
    kind: str
    key: str
    ts: datetime
    observed: float | str | None
    severity: str


class SeriesPoint(msgspec.Struct, array_like=True):
    ts: datetime
    min: float | None
    avg: float | None
    max: float | None
    count: int


class SeriesOut(msgspec.Struct, kw_only=True):
    stage: str | None
    kind: str
    key: str
    unit: str
    count: int
    points: list[SeriesPoint]


class FirmwareOut(msgspec.Struct, kw_only=True):
    component: str
    identifier: str
    version: str
    vendor: str = ""


class ArtifactOut(msgspec.Struct, kw_only=True):
    id: int
    kind: str
    path: str
    sha256: str
    size_bytes: int
    location: str
    stage: str | None = None


class EventOut(msgspec.Struct, kw_only=True):
    id: int
    ts: datetime
    kind: str
    level: str
    message: str
    run_id: int | None = None
    host_id: int | None = None
    actor: str | None = None
    data: dict[str, Any] | None = None


class RunDetail(msgspec.Struct, kw_only=True):
    run: RunOut
    stages: list[StageOut]
    substeps: list[SubStepOut]
    spec_diffs: list[SpecDiffOut]
    thresholds: list[ThresholdOut]
    tallies: list[TallyOut]
    breaches: list[BreachOut]
    breach_count: int
    firmware: list[FirmwareOut]
    artifacts: list[ArtifactOut]
    measurement_count: int
    log_line_count: int
    series: list[SeriesOut] = []
    inventory: dict[str, Any] | None = None
    override_flags: dict[str, Any] = {}


class Page(msgspec.Struct, Generic[T], kw_only=True):
    items: list[T]
    total: int
    limit: int
    offset: int


class OverrideRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    flags: dict[str, Any] = msgspec.field(default_factory=lambda: {"wipe": True})
    reason: str = ""


class ActionRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    reason: str = ""


class HealthOut(msgspec.Struct, kw_only=True):
    status: str
    database: str
    schema_version: str | None
    version: str
