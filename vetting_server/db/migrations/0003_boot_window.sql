-- The boot window and the binding of a run token (issue 16/18, docs/pxe.md "Security"):
-- boot_window_until: GET /ipxe/{mac} may hand out the run token until then (set when the
--   server powers the host on), ipxe_served_at/_to: when and to whom it did (once per window);
-- agent_boot_id/agent_peer: the agent the first hello bound the token to;
-- power_due_at: when the server clears the host's boot override and powers it off
--   (set at the verdict, cleared once done).
ALTER TABLE runs ADD COLUMN boot_window_until __TS__;
ALTER TABLE runs ADD COLUMN ipxe_served_at __TS__;
ALTER TABLE runs ADD COLUMN ipxe_served_to TEXT;
ALTER TABLE runs ADD COLUMN agent_boot_id TEXT;
ALTER TABLE runs ADD COLUMN agent_peer TEXT;
ALTER TABLE runs ADD COLUMN power_due_at __TS__;
CREATE INDEX idx_runs_power_due ON runs (power_due_at);
