"""Piccolo tables: the schema as Python classes (seed 000 plus this design's tables).

The authoritative DDL is ``migrations/*.sql`` (one template rendered for SQLite and
PostgreSQL, applied by :mod:`.migrate`); a test checks that these classes and the
migrated database have the same tables, columns and nullability. The cold paths
query through these classes (:mod:`.orm`: Piccolo builds the SQL, the project's
connections run it); the hot paths use SQL through :mod:`.database` (see
:mod:`vetting_server.ingest` and :mod:`vetting_server.runs` for why).

The timestamps of the append-only hot tables (``measurements.ts``, ``log_lines.ts``,
``threshold_evaluations.ts``, ``threshold_tallies.first_ts/last_ts``) are
``TIMESTAMPTZ`` on PostgreSQL but REAL Unix seconds on SQLite (see
:mod:`.database`); they are declared ``Timestamptz`` here for the PostgreSQL shape.

Tables with a composite primary key in SQL (``batches``, ``stage_results``,
``threshold_tallies``) have no ``id`` column; Piccolo adds a nominal one here.
"""

from __future__ import annotations

from piccolo.columns import (
    BigInt,
    Boolean,
    DoublePrecision,
    ForeignKey,
    Integer,
    Text,
    Timestamptz,
    Varchar,
)
from piccolo.columns.base import OnDelete
from piccolo.table import Table

from .orm import QUERY_ENGINE


class Hosts(Table, tablename="hosts"):
    name = Text(unique=True)
    mac = Text(unique=True)
    boot_provider = Text(default="manual")
    boot_config_json = Text(default="{}")
    expected_spec_yaml = Text(default="")
    notes = Text(default="")
    agent_token_hash = Text(null=True, default=None, unique=True)
    created_at = Timestamptz()
    updated_at = Timestamptz()
    last_seen_at = Timestamptz(null=True, default=None)
    last_seen_ip = Text(null=True, default=None)
    agent_version = Text(null=True, default=None)
    firmware_provider = Text(null=True, default=None)  # None: the boot provider's kind, when it also updates firmware
    firmware_config_json = Text(null=True, default=None)  # None: the boot config


class Runs(Table, tablename="runs"):
    host_id = ForeignKey(Hosts, on_delete=OnDelete.cascade, null=False)
    state = Text()
    version = BigInt(default=0)
    changed_at = Timestamptz(null=True, default=None)  # every version bump; REAL seconds on SQLite
    result = Text(null=True, default=None)
    failed_stage = Text(null=True, default=None)
    reason = Text(null=True, default=None)
    current_stage = Text(null=True, default=None)
    retry_stage = Text(null=True, default=None)
    next_boot_target = Text(null=True, default=None)
    agent_token_hash = Text()
    profile = Text(default="quick")
    non_destructive = Boolean()
    requested_stages_json = Text(null=True, default=None)
    override_flags_json = Text(default="{}")
    inventory_json = Text(null=True, default=None)
    expected_spec_json = Text(null=True, default=None)
    hold_ip = Text(null=True, default=None)
    hold_expires_at = Timestamptz(null=True, default=None)
    report_path = Text(null=True, default=None)
    boot_message = Text(null=True, default=None)
    agent_version = Text(null=True, default=None)
    agent_hostname = Text(null=True, default=None)
    agent_ip = Text(null=True, default=None)
    actor = Text(null=True, default=None)
    origin = Text(null=True, default=None)  # the command or API request that started the run
    started_at = Timestamptz()
    state_changed_at = Timestamptz()
    hello_at = Timestamptz(null=True, default=None)
    last_heartbeat_at = Timestamptz(null=True, default=None)
    completed_at = Timestamptz(null=True, default=None)
    boot_window_until = Timestamptz(null=True, default=None)
    ipxe_served_at = Timestamptz(null=True, default=None)
    ipxe_served_to = Text(null=True, default=None)
    agent_boot_id = Text(null=True, default=None)
    agent_peer = Text(null=True, default=None)
    power_due_at = Timestamptz(null=True, default=None)


class Stages(Table, tablename="stages"):
    run_id = ForeignKey(Runs, on_delete=OnDelete.cascade, null=False)
    name = Text()
    ordinal = Integer()
    state = Text(default="pending")
    runs_on = Text(default="agent")
    destructive = Boolean()
    timeout_s = DoublePrecision()
    params_json = Text(default="{}")
    attempt = Integer(default=0)
    reason = Text(null=True, default=None)
    started_at = Timestamptz(null=True, default=None)
    completed_at = Timestamptz(null=True, default=None)
    summary_json = Text(null=True, default=None)


class SubSteps(Table, tablename="sub_steps"):
    run_id = ForeignKey(Runs, on_delete=OnDelete.cascade, null=False)
    stage_name = Text()
    ordinal = Integer()
    name = Text()
    state = Text(default="pending")
    reason = Text(null=True, default=None)
    started_at = Timestamptz(null=True, default=None)
    completed_at = Timestamptz(null=True, default=None)
    summary_json = Text(default="{}")


class Measurements(Table, tablename="measurements"):
    run_id = ForeignKey(Runs, on_delete=OnDelete.cascade, null=False)
    stage_id = ForeignKey(Stages, on_delete=OnDelete.set_null, null=True, default=None)
    ts = Timestamptz()
    kind = Text()
    key = Text()
    value = DoublePrecision(null=True, default=None)
    unit = Text(null=True, default=None)
    text = Text(null=True, default=None)


class LogLines(Table, tablename="log_lines"):
    run_id = ForeignKey(Runs, on_delete=OnDelete.cascade, null=False)
    stage = Text(null=True, default=None)
    ts = Timestamptz()
    level = Varchar(length=20)
    message = Text()


class Batches(Table, tablename="batches"):
    """Primary key (run_id, stream, seq): a retried batch is stored once."""

    run_id = ForeignKey(Runs, on_delete=OnDelete.cascade, null=False)
    stream = Text()
    seq = BigInt()
    count = Integer()
    breaches = Integer(default=0)
    received_at = Timestamptz()
    digest = Text(null=True, default=None)  # SHA-256 of the batch's content (same seq, other content: 409)


class StageResults(Table, tablename="stage_results"):
    """Primary key (run_id, stage_name, attempt): the idempotency record of /result."""

    run_id = ForeignKey(Runs, on_delete=OnDelete.cascade, null=False)
    stage_name = Text()
    attempt = Integer()
    body_hash = Text()
    reply_json = Text()
    received_at = Timestamptz()


class Artifacts(Table, tablename="artifacts"):
    run_id = ForeignKey(Runs, on_delete=OnDelete.cascade, null=False)
    stage_id = ForeignKey(Stages, on_delete=OnDelete.set_null, null=True, default=None)
    kind = Text()
    path = Text()
    sha256 = Text()
    size_bytes = BigInt()
    location = Text(default="agent")
    created_at = Timestamptz()


class SpecDiffs(Table, tablename="spec_diffs"):
    run_id = ForeignKey(Runs, on_delete=OnDelete.cascade, null=False)
    stage_name = Text(null=True, default=None)
    field = Text()
    expected = Text(null=True, default=None)
    actual = Text(null=True, default=None)
    severity = Text()
    message = Text(default="")
    ignored = Boolean(default=False)


class Thresholds(Table, tablename="thresholds"):
    run_id = ForeignKey(Runs, on_delete=OnDelete.cascade, null=False)
    ordinal = Integer()
    stage_name = Text()
    kind = Text()
    key = Text()
    op = Text()
    threshold = DoublePrecision(null=True, default=None)
    threshold_text = Text(null=True, default=None)
    nominal = DoublePrecision(default=0.0)
    unit = Text(default="")
    severity = Text()
    source = Text()


class ThresholdEvaluations(Table, tablename="threshold_evaluations"):
    """Breaches, one row per sample (passes are tallied in ``threshold_tallies``)."""

    run_id = ForeignKey(Runs, on_delete=OnDelete.cascade, null=False)
    threshold_id = ForeignKey(Thresholds, on_delete=OnDelete.cascade, null=False)
    stage_name = Text()
    kind = Text()
    key = Text()
    ts = Timestamptz()
    observed = DoublePrecision(null=True, default=None)
    observed_text = Text(null=True, default=None)
    passed = Boolean()
    severity = Text()


class ThresholdTallies(Table, tablename="threshold_tallies"):
    """Primary key (run_id, threshold_id, stage_name, key): passes and breaches counted."""

    run_id = ForeignKey(Runs, on_delete=OnDelete.cascade, null=False)
    threshold_id = ForeignKey(Thresholds, on_delete=OnDelete.cascade, null=False)
    stage_name = Text()
    key = Text()
    passed_count = BigInt()
    breach_count = BigInt()
    min_observed = DoublePrecision(null=True, default=None)
    max_observed = DoublePrecision(null=True, default=None)
    first_ts = Timestamptz()
    last_ts = Timestamptz()


class FirmwareSnapshots(Table, tablename="firmware_snapshots"):
    run_id = ForeignKey(Runs, on_delete=OnDelete.cascade, null=False)
    component = Text()
    identifier = Text()
    version = Text()
    vendor = Text(default="")
    raw_json = Text(default="{}")


class FirmwareArtifacts(Table, tablename="firmware_artifacts"):
    """A firmware image in the artifact store (``data_dir/firmware/<sha256>``)."""

    component = Text()
    version = Text()
    filename = Text()
    sha256 = Text(unique=True)
    size_bytes = BigInt()
    path = Text()
    targets_json = Text(default="[]")  # inventory id/name globs; [] = every item of the component
    reboot = Text(default="auto")  # auto (when the BMC says so), always, never
    notes = Text(default="")
    created_by = Text(null=True, default=None)
    created_at = Timestamptz()


class FirmwarePlans(Table, tablename="firmware_plans"):
    name = Text()
    state = Text()  # vetting_server.firmware.states.PlanState
    version = BigInt(default=0)
    policy_json = Text()
    document_json = Text()  # the plan as submitted
    reason = Text(null=True, default=None)
    waiting = Text(null=True, default=None)  # why no host starts now (maintenance window…)
    source_run_id = ForeignKey(Runs, on_delete=OnDelete.set_null, null=True, default=None)  # remediation of this run
    created_by = Text(null=True, default=None)
    approved_by = Text(null=True, default=None)
    created_at = Timestamptz()
    approved_at = Timestamptz(null=True, default=None)
    started_at = Timestamptz(null=True, default=None)
    completed_at = Timestamptz(null=True, default=None)
    updated_at = Timestamptz()


class FirmwarePlanArtifacts(Table, tablename="firmware_plan_artifacts"):
    """Primary key (plan_id, ordinal): the plan's images, in install order."""

    plan_id = ForeignKey(FirmwarePlans, on_delete=OnDelete.cascade, null=False)
    ordinal = Integer()
    artifact_id = ForeignKey(FirmwareArtifacts, null=False)


class FirmwareUpdates(Table, tablename="firmware_updates"):
    """One host of one plan (unique): its target priority and its update's state machine."""

    plan_id = ForeignKey(FirmwarePlans, on_delete=OnDelete.cascade, null=False)
    host_id = ForeignKey(Hosts, on_delete=OnDelete.cascade, null=False)
    priority = Integer(default=0)
    state = Text()  # vetting_server.firmware.states.UpdateState
    version = BigInt(default=0)
    phase = Text(null=True, default=None)  # download, install, reboot, verify
    percent = Integer(null=True, default=None)
    message = Text(null=True, default=None)
    reason = Text(null=True, default=None)
    attempts = Integer(default=0)
    retry_at = Timestamptz(null=True, default=None)
    ctx_json = Text(default="{}")  # versions before/after, seconds per phase
    image_token_hash = Text(null=True, default=None)  # SHA-256 of the URL token the BMC fetches the image with
    vet_run_id = ForeignKey(Runs, on_delete=OnDelete.set_null, null=True, default=None)
    created_at = Timestamptz()
    started_at = Timestamptz(null=True, default=None)
    completed_at = Timestamptz(null=True, default=None)
    updated_at = Timestamptz()


class Events(Table, tablename="events"):
    run_id = ForeignKey(Runs, on_delete=OnDelete.cascade, null=True, default=None)
    host_id = ForeignKey(Hosts, on_delete=OnDelete.cascade, null=True, default=None)
    ts = Timestamptz()
    level = Text()
    kind = Text()
    message = Text()
    actor = Text(null=True, default=None)
    data_json = Text(null=True, default=None)
    plan_id = ForeignKey(FirmwarePlans, on_delete=OnDelete.cascade, null=True, default=None)


class Settings(Table, tablename="settings"):
    """Key-value store (primary key ``key``)."""

    key = Text(primary_key=True)
    value = Text()


class Users(Table, tablename="users"):
    name = Text(unique=True)
    password_hash = Text(null=True, default=None)  # scrypt; NULL: API tokens only
    created_at = Timestamptz()
    disabled = Boolean(default=False)


class ApiTokens(Table, tablename="api_tokens"):
    user_id = ForeignKey(Users, on_delete=OnDelete.cascade, null=False)
    name = Text(default="")
    token_hash = Text(unique=True)  # SHA-256 of the token
    created_at = Timestamptz()
    last_used_at = Timestamptz(null=True, default=None)
    revoked = Boolean(default=False)


class UiSessions(Table, tablename="ui_sessions"):
    """A web UI login (only the SHA-256 of the cookie's id is stored)."""

    token_hash = Text(unique=True)
    user_id = ForeignKey(Users, on_delete=OnDelete.cascade, null=False)
    csrf_token = Text()
    created_at = Timestamptz()
    last_seen_at = Timestamptz()
    idle_until = Timestamptz()
    expires_at = Timestamptz()
    client = Text(null=True, default=None)
    user_agent = Text(null=True, default=None)


class SpecIgnores(Table, tablename="spec_ignores"):
    """An expected-spec difference ignored for a host: later runs carry it in their spec."""

    host_id = ForeignKey(Hosts, on_delete=OnDelete.cascade, null=False)
    field = Text()
    actual = Text(null=True, default=None)
    expected = Text(null=True, default=None)
    reason = Text(default="")
    created_by = Text(null=True, default=None)
    created_at = Timestamptz()


TABLES: tuple[type[Table], ...] = (
    Hosts, Runs, Stages, SubSteps, Measurements, LogLines, Batches, StageResults, Artifacts, SpecDiffs,
    Thresholds, ThresholdEvaluations, ThresholdTallies, FirmwareSnapshots, Events, Settings, Users, ApiTokens,
    FirmwareArtifacts, FirmwarePlans, FirmwarePlanArtifacts, FirmwareUpdates, UiSessions, SpecIgnores,
)

for _table in TABLES:
    _table._meta.db = QUERY_ENGINE  # type: ignore[assignment]  # compiles for the connection's dialect (.orm)
