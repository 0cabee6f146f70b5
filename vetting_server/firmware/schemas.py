"""Request and response bodies of the firmware API (msgspec Structs, bounded)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

Reason = Annotated[str, msgspec.Meta(max_length=2000)]
Kind = Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")]


class ArtifactOut(msgspec.Struct, kw_only=True):
    id: int
    component: str
    version: str
    filename: str
    sha256: str
    size_bytes: int
    targets: list[str]
    reboot: str
    notes: str
    created_at: datetime
    created_by: str | None = None


class VersionChange(msgspec.Struct, kw_only=True):
    artifact_id: int
    component: str
    before: str | None
    after: str


class UpdateOut(msgspec.Struct, kw_only=True):
    """One host of a plan: its update's state, phase and progress, and the vetting run after it."""

    id: int
    host_id: int
    host_name: str
    priority: int
    state: str
    attempts: int
    phase: str | None = None
    percent: int | None = None
    message: str | None = None
    reason: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    retry_at: datetime | None = None
    changes: list[VersionChange] = []
    vet_run_id: int | None = None
    vet_state: str | None = None
    vet_result: str | None = None


class PlanOut(msgspec.Struct, kw_only=True):
    id: int
    name: str
    state: str
    policy: dict[str, Any]
    hosts: dict[str, int]  # number of hosts per update state
    created_at: datetime
    reason: str | None = None
    waiting: str | None = None  # why no host starts now
    source_run_id: int | None = None
    created_by: str | None = None
    approved_by: str | None = None
    approved_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None


class PlanDetail(msgspec.Struct, kw_only=True):
    plan: PlanOut
    artifacts: list[ArtifactOut]
    updates: list[UpdateOut]


class PlanAction(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    reason: Reason = ""


class ProviderSet(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A host's firmware provider; ``kind: null`` goes back to using the boot provider."""

    kind: Kind | None
    config: Annotated[dict[str, Any], msgspec.Meta(max_length=100)] = {}


class FirmwareItemOut(msgspec.Struct, kw_only=True):
    id: str
    name: str
    version: str
    component: str
    updateable: bool


class HostFirmwareOut(msgspec.Struct, kw_only=True):
    host_id: int
    host_name: str
    provider: str | None
    config_from: Literal["firmware_config", "boot_config", "none"]
    items: list[FirmwareItemOut] = []


class RemediationOffer(msgspec.Struct, kw_only=True):
    component: str
    field: str
    actual: str | None
    expected: list[str]
    artifact: ArtifactOut | None  # None: no image in the store fixes it


class RemediationOut(msgspec.Struct, kw_only=True):
    """What "update and re-vet" would do for a run that failed on firmware versions."""

    run_id: int
    host_id: int
    host_name: str
    available: bool  # every firmware mismatch has an image and the host has a provider
    why_not: str | None = None
    offers: list[RemediationOffer] = []
    plan_ids: list[int] = []  # plans already started from this run


class RemediationStart(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    approval_required: bool = False  # True: the plan waits for POST …/approve and …/start
    reason: Reason = ""
