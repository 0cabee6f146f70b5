-- Vetting schema, version 1. Rendered per engine by vetting_server.migrate:
-- __PK__ (autoincrement key), __ROWID__ (key for append-only hot tables), __BIGINT__,
-- __TS__ (timestamp), __EPOCH__ (timestamp of hot, append-only rows: REAL Unix seconds on
-- SQLite, where a text key would halve the insert rate of the (run, kind, ts) index), __BOOL__, __REAL__. Tables mirror seed 000 plus what this
-- design needs (batches, stage_results, log_lines, threshold_tallies, users, api_tokens).

CREATE TABLE hosts (
    id __PK__,
    name TEXT NOT NULL UNIQUE,
    mac TEXT NOT NULL UNIQUE,
    boot_provider TEXT NOT NULL DEFAULT 'manual',
    boot_config_json TEXT NOT NULL DEFAULT '{}',
    expected_spec_yaml TEXT NOT NULL DEFAULT '',
    notes TEXT NOT NULL DEFAULT '',
    agent_token_hash TEXT UNIQUE,
    created_at __TS__ NOT NULL,
    updated_at __TS__ NOT NULL,
    last_seen_at __TS__,
    last_seen_ip TEXT,
    agent_version TEXT
);

CREATE TABLE runs (
    id __PK__,
    host_id __BIGINT__ NOT NULL REFERENCES hosts(id) ON DELETE CASCADE,
    state TEXT NOT NULL,
    version __BIGINT__ NOT NULL DEFAULT 0,
    changed_at __EPOCH__,
    result TEXT,
    failed_stage TEXT,
    reason TEXT,
    current_stage TEXT,
    retry_stage TEXT,
    next_boot_target TEXT,
    agent_token_hash TEXT NOT NULL,
    profile TEXT NOT NULL DEFAULT 'quick',
    non_destructive __BOOL__ NOT NULL,
    requested_stages_json TEXT,
    override_flags_json TEXT NOT NULL DEFAULT '{}',
    inventory_json TEXT,
    expected_spec_json TEXT,
    hold_ip TEXT,
    hold_expires_at __TS__,
    report_path TEXT,
    boot_message TEXT,
    agent_version TEXT,
    agent_hostname TEXT,
    agent_ip TEXT,
    actor TEXT,
    started_at __TS__ NOT NULL,
    state_changed_at __TS__ NOT NULL,
    hello_at __TS__,
    last_heartbeat_at __TS__,
    completed_at __TS__
);
CREATE INDEX idx_runs_host ON runs (host_id);
CREATE INDEX idx_runs_state ON runs (state);
CREATE INDEX idx_runs_token ON runs (agent_token_hash);
CREATE INDEX idx_runs_changed ON runs (changed_at);

CREATE TABLE stages (
    id __PK__,
    run_id __BIGINT__ NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    ordinal INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    runs_on TEXT NOT NULL DEFAULT 'agent',
    destructive __BOOL__ NOT NULL,
    timeout_s __REAL__ NOT NULL,
    params_json TEXT NOT NULL DEFAULT '{}',
    attempt INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    started_at __TS__,
    completed_at __TS__,
    summary_json TEXT,
    UNIQUE (run_id, name)
);
CREATE INDEX idx_stages_run_ordinal ON stages (run_id, ordinal);

CREATE TABLE sub_steps (
    id __PK__,
    run_id __BIGINT__ NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    stage_name TEXT NOT NULL,
    ordinal INTEGER NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    reason TEXT,
    started_at __TS__,
    completed_at __TS__,
    summary_json TEXT NOT NULL DEFAULT '{}',
    UNIQUE (run_id, stage_name, ordinal)
);

CREATE TABLE measurements (
    id __ROWID__,
    run_id __BIGINT__ NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    stage_id __BIGINT__ REFERENCES stages(id) ON DELETE SET NULL,
    ts __EPOCH__ NOT NULL,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    value __REAL__,
    unit TEXT,
    text TEXT
);
CREATE INDEX idx_measurements_run_kind_ts ON measurements (run_id, kind, ts);

CREATE TABLE log_lines (
    id __ROWID__,
    run_id __BIGINT__ NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    stage TEXT,
    ts __EPOCH__ NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX idx_log_lines_run ON log_lines (run_id, id);

CREATE TABLE batches (
    run_id __BIGINT__ NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    stream TEXT NOT NULL,
    seq __BIGINT__ NOT NULL,
    count INTEGER NOT NULL,
    breaches INTEGER NOT NULL DEFAULT 0,
    received_at __TS__ NOT NULL,
    PRIMARY KEY (run_id, stream, seq)
);

CREATE TABLE stage_results (
    run_id __BIGINT__ NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    stage_name TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    body_hash TEXT NOT NULL,
    reply_json TEXT NOT NULL,
    received_at __TS__ NOT NULL,
    PRIMARY KEY (run_id, stage_name, attempt)
);

CREATE TABLE artifacts (
    id __PK__,
    run_id __BIGINT__ NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    stage_id __BIGINT__ REFERENCES stages(id) ON DELETE SET NULL,
    kind TEXT NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size_bytes __BIGINT__ NOT NULL,
    location TEXT NOT NULL DEFAULT 'agent',
    created_at __TS__ NOT NULL
);
CREATE INDEX idx_artifacts_run ON artifacts (run_id);

CREATE TABLE spec_diffs (
    id __PK__,
    run_id __BIGINT__ NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    stage_name TEXT,
    field TEXT NOT NULL,
    expected TEXT,
    actual TEXT,
    severity TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    ignored __BOOL__ NOT NULL
);
CREATE INDEX idx_spec_diffs_run ON spec_diffs (run_id);

CREATE TABLE thresholds (
    id __PK__,
    run_id __BIGINT__ NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    ordinal INTEGER NOT NULL,
    stage_name TEXT NOT NULL,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    op TEXT NOT NULL,
    threshold __REAL__,
    threshold_text TEXT,
    nominal __REAL__ NOT NULL DEFAULT 0,
    unit TEXT NOT NULL DEFAULT '',
    severity TEXT NOT NULL,
    source TEXT NOT NULL
);
CREATE INDEX idx_thresholds_run ON thresholds (run_id);
CREATE INDEX idx_thresholds_kind ON thresholds (run_id, stage_name, kind);

CREATE TABLE threshold_evaluations (
    id __ROWID__,
    run_id __BIGINT__ NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    threshold_id __BIGINT__ NOT NULL REFERENCES thresholds(id) ON DELETE CASCADE,
    stage_name TEXT NOT NULL,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    ts __EPOCH__ NOT NULL,
    observed __REAL__,
    observed_text TEXT,
    passed __BOOL__ NOT NULL,
    severity TEXT NOT NULL
);
CREATE INDEX idx_threshold_evals_run ON threshold_evaluations (run_id, passed);

CREATE TABLE threshold_tallies (
    run_id __BIGINT__ NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    threshold_id __BIGINT__ NOT NULL REFERENCES thresholds(id) ON DELETE CASCADE,
    stage_name TEXT NOT NULL,
    key TEXT NOT NULL,
    passed_count __BIGINT__ NOT NULL,
    breach_count __BIGINT__ NOT NULL,
    min_observed __REAL__,
    max_observed __REAL__,
    first_ts __EPOCH__ NOT NULL,
    last_ts __EPOCH__ NOT NULL,
    PRIMARY KEY (run_id, threshold_id, stage_name, key)
);

CREATE TABLE firmware_snapshots (
    id __PK__,
    run_id __BIGINT__ NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    component TEXT NOT NULL,
    identifier TEXT NOT NULL,
    version TEXT NOT NULL,
    vendor TEXT NOT NULL DEFAULT '',
    raw_json TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX idx_firmware_run ON firmware_snapshots (run_id, component);

CREATE TABLE events (
    id __PK__,
    run_id __BIGINT__ REFERENCES runs(id) ON DELETE CASCADE,
    host_id __BIGINT__ REFERENCES hosts(id) ON DELETE CASCADE,
    ts __TS__ NOT NULL,
    level TEXT NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    actor TEXT,
    data_json TEXT
);
CREATE INDEX idx_events_run ON events (run_id, id);
CREATE INDEX idx_events_host ON events (host_id, id);

CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE users (
    id __PK__,
    name TEXT NOT NULL UNIQUE,
    password_hash TEXT,
    created_at __TS__ NOT NULL,
    disabled __BOOL__ NOT NULL
);

CREATE TABLE api_tokens (
    id __PK__,
    user_id __BIGINT__ NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name TEXT NOT NULL DEFAULT '',
    token_hash TEXT NOT NULL UNIQUE,
    created_at __TS__ NOT NULL,
    last_used_at __TS__,
    revoked __BOOL__ NOT NULL
);
