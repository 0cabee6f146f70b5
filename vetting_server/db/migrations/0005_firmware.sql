-- Firmware campaigns (issue 21), after the seed's iDRAC updater (seeds/003): artifacts
-- with their sha256, update plans with a policy, and one row per (plan, host) that is
-- both the seed's plan_targets (priority) and its host_runs (state machine, attempts,
-- ctx). The plan's events go to the shared events table (new column plan_id), so a
-- host's history shows its firmware updates beside its vetting runs.

ALTER TABLE hosts ADD COLUMN firmware_provider TEXT;
ALTER TABLE hosts ADD COLUMN firmware_config_json TEXT;

CREATE TABLE firmware_artifacts (
    id __PK__,
    component TEXT NOT NULL,
    version TEXT NOT NULL,
    filename TEXT NOT NULL,
    sha256 TEXT NOT NULL UNIQUE,
    size_bytes __BIGINT__ NOT NULL,
    path TEXT NOT NULL,
    targets_json TEXT NOT NULL DEFAULT '[]',
    reboot TEXT NOT NULL DEFAULT 'auto',
    notes TEXT NOT NULL DEFAULT '',
    created_by TEXT,
    created_at __TS__ NOT NULL
);
CREATE INDEX idx_firmware_artifacts_component ON firmware_artifacts (component, version);

CREATE TABLE firmware_plans (
    id __PK__,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    version __BIGINT__ NOT NULL DEFAULT 0,
    policy_json TEXT NOT NULL,
    document_json TEXT NOT NULL,
    reason TEXT,
    waiting TEXT,
    source_run_id __BIGINT__ REFERENCES runs(id) ON DELETE SET NULL,
    created_by TEXT,
    approved_by TEXT,
    created_at __TS__ NOT NULL,
    approved_at __TS__,
    started_at __TS__,
    completed_at __TS__,
    updated_at __TS__ NOT NULL
);
CREATE INDEX idx_firmware_plans_state ON firmware_plans (state);

CREATE TABLE firmware_plan_artifacts (
    plan_id __BIGINT__ NOT NULL REFERENCES firmware_plans(id) ON DELETE CASCADE,
    ordinal INTEGER NOT NULL,
    artifact_id __BIGINT__ NOT NULL REFERENCES firmware_artifacts(id),
    PRIMARY KEY (plan_id, ordinal)
);

CREATE TABLE firmware_updates (
    id __PK__,
    plan_id __BIGINT__ NOT NULL REFERENCES firmware_plans(id) ON DELETE CASCADE,
    host_id __BIGINT__ NOT NULL REFERENCES hosts(id) ON DELETE CASCADE,
    priority INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    version __BIGINT__ NOT NULL DEFAULT 0,
    phase TEXT,
    percent INTEGER,
    message TEXT,
    reason TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    retry_at __TS__,
    ctx_json TEXT NOT NULL DEFAULT '{}',
    image_token_hash TEXT,
    vet_run_id __BIGINT__ REFERENCES runs(id) ON DELETE SET NULL,
    created_at __TS__ NOT NULL,
    started_at __TS__,
    completed_at __TS__,
    updated_at __TS__ NOT NULL,
    UNIQUE (plan_id, host_id)
);
CREATE INDEX idx_firmware_updates_state ON firmware_updates (state);
CREATE INDEX idx_firmware_updates_host ON firmware_updates (host_id);
CREATE INDEX idx_firmware_updates_token ON firmware_updates (image_token_hash);

ALTER TABLE events ADD COLUMN plan_id __BIGINT__ REFERENCES firmware_plans(id) ON DELETE CASCADE;
CREATE INDEX idx_events_plan ON events (plan_id, id);
