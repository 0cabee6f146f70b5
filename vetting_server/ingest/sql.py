"""The ingest's SQL, written once for both engines (``$n`` placeholders; SQLite gets
``?n`` through ``database._sqlite_sql``). ``TALLY`` differs per dialect: SQLite has
no ``LEAST``/``GREATEST`` and its ``min``/``max`` of a NULL is NULL."""

INS_BATCH = (
    "INSERT INTO batches (run_id, stream, seq, count, breaches, received_at, digest) VALUES ($1, $2, $3, $4, $5, $6, $7) "
    "ON CONFLICT DO NOTHING"
)
# a batch that was there already: a retry (same digest, or stored before digests) or a conflict
SEL_DIGEST = "SELECT digest FROM batches WHERE run_id = $1 AND stream = $2 AND seq = $3"
NEW, DUPLICATE, CONFLICT = 0, 1, 2  # what became of each batch of a group


def batch_status(stored: str | None, digest: str | None) -> int:
    return DUPLICATE if stored is None or digest is None or stored == digest else CONFLICT
INS_MEAS = "INSERT INTO measurements (run_id, stage_id, ts, kind, key, value, unit, text) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
# numeric samples (nearly all) leave ``text`` out: binding a NULL costs SQLite's Python
# driver an adapter lookup per value (measured: 0.6 µs of a row's ~1.7 µs to bind and insert)
INS_MEAS_NUMERIC = "INSERT INTO measurements (run_id, stage_id, ts, kind, key, value, unit) VALUES ($1, $2, $3, $4, $5, $6, $7)"
INS_EVAL = (
    "INSERT INTO threshold_evaluations (run_id, threshold_id, stage_name, kind, key, ts, observed, observed_text, passed, severity) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
)
INS_LOG = "INSERT INTO log_lines (run_id, stage, ts, level, message) VALUES ($1, $2, $3, $4, $5)"
TALLY = {
    "sqlite": (
        "INSERT INTO threshold_tallies (run_id, threshold_id, stage_name, key, passed_count, breach_count, "
        "min_observed, max_observed, first_ts, last_ts) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) "
        "ON CONFLICT (run_id, threshold_id, stage_name, key) DO UPDATE SET "
        "passed_count = threshold_tallies.passed_count + excluded.passed_count, "
        "breach_count = threshold_tallies.breach_count + excluded.breach_count, "
        "min_observed = min(coalesce(threshold_tallies.min_observed, excluded.min_observed), coalesce(excluded.min_observed, threshold_tallies.min_observed)), "
        "max_observed = max(coalesce(threshold_tallies.max_observed, excluded.max_observed), coalesce(excluded.max_observed, threshold_tallies.max_observed)), "
        "first_ts = min(threshold_tallies.first_ts, excluded.first_ts), last_ts = max(threshold_tallies.last_ts, excluded.last_ts)"
    ),
    "postgresql": (
        "INSERT INTO threshold_tallies (run_id, threshold_id, stage_name, key, passed_count, breach_count, "
        "min_observed, max_observed, first_ts, last_ts) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) "
        "ON CONFLICT (run_id, threshold_id, stage_name, key) DO UPDATE SET "
        "passed_count = threshold_tallies.passed_count + excluded.passed_count, "
        "breach_count = threshold_tallies.breach_count + excluded.breach_count, "
        "min_observed = LEAST(threshold_tallies.min_observed, excluded.min_observed), "
        "max_observed = GREATEST(threshold_tallies.max_observed, excluded.max_observed), "
        "first_ts = LEAST(threshold_tallies.first_ts, excluded.first_ts), last_ts = GREATEST(threshold_tallies.last_ts, excluded.last_ts)"
    ),
}
