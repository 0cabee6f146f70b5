-- Version 7: the operator's web UI (issue 19, docs/ui.md).
-- ui_sessions: server-side sessions of the web UI. The cookie holds a random id; only its
--   SHA-256 is stored (a copy of the database opens no session). A session ends at
--   idle_until (pushed forward as it is used) or expires_at (its login + the absolute
--   limit), whichever comes first; csrf_token goes with every state-changing request.
-- spec_ignores: the expected-spec differences an operator chose to ignore for a host;
--   every run planned after that carries them in its spec (vetting_core.specdiff.SpecIgnore).
CREATE TABLE ui_sessions (
    id __PK__,
    token_hash TEXT NOT NULL UNIQUE,
    user_id __BIGINT__ NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    csrf_token TEXT NOT NULL,
    created_at __TS__ NOT NULL,
    last_seen_at __TS__ NOT NULL,
    idle_until __TS__ NOT NULL,
    expires_at __TS__ NOT NULL,
    client TEXT,
    user_agent TEXT
);
CREATE INDEX idx_ui_sessions_expires ON ui_sessions (expires_at);

CREATE TABLE spec_ignores (
    id __PK__,
    host_id __BIGINT__ NOT NULL REFERENCES hosts(id) ON DELETE CASCADE,
    field TEXT NOT NULL,
    actual TEXT,
    expected TEXT,
    reason TEXT NOT NULL DEFAULT '',
    created_by TEXT,
    created_at __TS__ NOT NULL
);
CREATE INDEX idx_spec_ignores_host ON spec_ignores (host_id);
