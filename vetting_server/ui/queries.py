"""The web UI's SQL reads: dashboard tiles, counts and attention list, chart series.

The UI's other reads (a run and its stages, a host's runs and inventories, the audit
log) are Piccolo queries in :mod:`vetting_server.runs.listing`, beside the operator
API's listings. These stay SQL through :mod:`vetting_server.db.database` because each
needs what Piccolo's foreign-key joins cannot say: a host's latest run found by a
correlated ``max(id)`` subquery, a ``MATERIALIZED`` CTE, an order by ``CASE``, a join on
two columns (a run's failed stage), a time bucket written per dialect. The dashboard is
the query that must stay fast with 10,000 hosts (``bench/ui_dashboard.py``): each host's
latest run is one lookup on the ``idx_runs_host`` index (:data:`_CURRENT`), the page is
cut in SQL (``LIMIT``/``OFFSET``), and the counts are one more pass over the hosts.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from vetting_core import statemachine
from vetting_core.statemachine import FAILED, RunState, sql_states

from ..db.database import Database, as_dt

# runs that need a person: held (maybe waiting for a wipe override) or failed and not released
ACTIVE = tuple(s.value for s in RunState if s in statemachine.ACTIVE)  # lifecycle order, for the filter
STATES = ("idle", *ACTIVE, "FailedHolding", "Failed", "Completed", "Released", "Cancelled")
VERDICTS = ("pass", "fail", "incomplete", "cancelled", "none")
PAGE = 60

# Each host's latest run and latest finished run: one lookup each on idx_runs_host
# (host_id, id) per host, materialized first. Joined directly, a filter on the run's state
# let the planner start from idx_runs_state and rescan every host for each run it found
# (3 to 8 s for 10,000 hosts on SQLite); the materialized table keeps it at one pass.
_CURRENT = (
    "WITH cur AS MATERIALIZED (SELECT h.id AS host_id, (SELECT max(id) FROM runs WHERE host_id = h.id) AS run_id, "
    "(SELECT max(id) FROM runs WHERE host_id = h.id AND result IS NOT NULL) AS verdict_run_id FROM hosts h) "
)
_FROM = (
    "FROM cur JOIN hosts h ON h.id = cur.host_id LEFT JOIN runs r ON r.id = cur.run_id "
    "LEFT JOIN runs v ON v.id = cur.verdict_run_id "
)
_TILE_COLUMNS = (
    "SELECT h.id, h.name, h.mac, h.boot_provider, h.last_seen_at, r.id AS run_id, r.state, r.result, r.profile, "
    "r.current_stage, r.failed_stage, r.reason, r.state_changed_at, r.hold_expires_at, r.hold_ip, "
    "v.id AS verdict_run_id, v.result AS verdict, v.completed_at AS verdict_at "
)
_PRIORITY = (
    "CASE r.state WHEN 'FailedHolding' THEN 0 WHEN 'Failed' THEN 1 WHEN 'Running' THEN 2 WHEN 'Reporting' THEN 2 "
    "WHEN 'Booting' THEN 3 WHEN 'WaitingBoot' THEN 3 WHEN 'Queued' THEN 4 WHEN 'Registered' THEN 4 ELSE 5 END"
)


def _where(state: str | None, verdict: str | None, text: str | None) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    if state == "idle":
        clauses.append("r.id IS NULL")
    elif state == "attention":
        clauses.append(f"r.state IN {sql_states(FAILED)}")
    elif state == "active":
        clauses.append(f"r.state IN {sql_states(statemachine.ACTIVE)}")
    elif state:
        args.append(state)
        clauses.append(f"r.state = ${len(args)}")
    if verdict == "none":
        clauses.append("v.id IS NULL")
    elif verdict:
        args.append(verdict)
        clauses.append(f"v.result = ${len(args)}")
    if text:
        args.append(f"%{text.lower()}%")
        clauses.append(f"(lower(h.name) LIKE ${len(args)} OR h.mac LIKE ${len(args)})")
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", args


async def tiles(db: Database, *, state: str | None = None, verdict: str | None = None, text: str | None = None,
                page: int = 1, per_page: int = PAGE) -> tuple[list[dict[str, Any]], int]:
    """One page of host tiles (people-first, then by name) and the number of hosts matching."""
    where, args = _where(state, verdict, text)
    total = await db.fetchval(f"{_CURRENT}SELECT count(*) {_FROM}{where}" if where else "SELECT count(*) FROM hosts", *args)
    rows = await db.fetch(
        f"{_CURRENT}{_TILE_COLUMNS}{_FROM}{where} ORDER BY {_PRIORITY}, h.name "
        f"LIMIT ${len(args) + 1} OFFSET ${len(args) + 2}",
        *args, per_page, (max(1, page) - 1) * per_page,
    )
    return rows, int(total or 0)


async def tile(db: Database, host_id: int) -> dict[str, Any] | None:
    return await db.fetchrow(
        f"{_TILE_COLUMNS}FROM hosts h LEFT JOIN runs r ON r.id = (SELECT max(id) FROM runs WHERE host_id = h.id) "
        "LEFT JOIN runs v ON v.id = (SELECT max(id) FROM runs WHERE host_id = h.id AND result IS NOT NULL) WHERE h.id = $1",
        host_id,
    )


async def counts(db: Database) -> dict[str, int]:
    """Hosts per current state (``idle``: no run yet)."""
    rows = await db.fetch(
        "SELECT r.state, count(*) AS n FROM hosts h "
        "LEFT JOIN runs r ON r.id = (SELECT max(id) FROM runs WHERE host_id = h.id) GROUP BY r.state"
    )
    return {(r["state"] or "idle"): int(r["n"]) for r in rows}


async def attention(db: Database, limit: int = 50) -> list[dict[str, Any]]:
    """Runs that need a person, the hold closest to expiring first; held runs say whether
    their stage is waiting for a wipe override (the probe's findings are in its summary)."""
    rows = await db.fetch(
        "SELECT r.id, r.host_id, h.name AS host_name, r.state, r.failed_stage, r.reason, r.hold_ip, r.hold_expires_at, "
        "r.state_changed_at, s.summary_json FROM runs r JOIN hosts h ON h.id = r.host_id "
        "LEFT JOIN stages s ON s.run_id = r.id AND s.name = r.failed_stage "
        "WHERE r.state IN ('FailedHolding', 'Failed') AND r.id = (SELECT max(id) FROM runs WHERE host_id = r.host_id) "
        "ORDER BY CASE r.state WHEN 'FailedHolding' THEN 0 ELSE 1 END, r.hold_expires_at, r.id LIMIT $1",
        limit,
    )
    return [{**r, "kind": attention_kind(r)} for r in rows]


def attention_kind(run: dict[str, Any]) -> str:
    """held, waiting for override, agent lost, failed (each needs a person)."""
    if run.get("state") == "FailedHolding":
        return "waiting for override" if '"wipe_probe"' in (run.get("summary_json") or "") else "held"
    if (run.get("reason") or "").startswith("agent lost"):
        return "agent lost"
    return "failed"


async def buckets(db: Database, run_id: int, t0: datetime, bucket_s: float) -> list[dict[str, Any]]:
    """The run's numeric samples averaged in time buckets of ``bucket_s`` seconds since
    ``t0``, per (kind, key, unit): mean, min and max per bucket, computed by the database
    (a long burn-in holds millions of samples; the page needs a few hundred points)."""
    if db.dialect == "sqlite":  # ts: REAL Unix seconds (database.py); CAST truncates
        b = "CAST((m.ts - $2) / $3 AS INTEGER)"
    else:
        b = "CAST(floor((extract(epoch from m.ts)::float8 - $2::float8) / $3::float8) AS BIGINT)"
    return await db.fetch(
        f"SELECT m.kind, m.key, coalesce(m.unit, '') AS unit, {b} AS b, "
        "avg(m.value) AS mean, min(m.value) AS lo, max(m.value) AS hi, count(*) AS n FROM measurements m "
        "WHERE m.run_id = $1 AND m.value IS NOT NULL GROUP BY m.kind, m.key, coalesce(m.unit, ''), b ORDER BY b",
        run_id, t0.timestamp(), bucket_s,
    )


def bucket_size(span_s: float, points: int = 120) -> float:
    """Seconds per bucket so that ``span_s`` gives about ``points`` buckets (at least 1 s)."""
    return max(1.0, math.ceil(span_s / points))


def seconds(a: datetime | None, b: Any) -> float | None:
    b = as_dt(b)
    return None if a is None or b is None else (b - a).total_seconds()
