"""A fleet of hosts and runs written straight into a server's database, for benchmarks.

Filling 10,000 hosts through the API would take minutes and measure the API; the
benchmarks want the *reads* on a big fleet, so the rows go in with the database's own
bulk insert (the schema is the server's own; start the server first so that it has
migrated). Per host 0 to 3 runs, the latest one in a spread of states (a fifth never
ran, a few percent held with a hold TTL, failed, running, the rest finished), each
finished run with a verdict. Host ids are ``1..hosts``.

Used by ``bench/ui_dashboard.py`` (SQLite) and ``bench/operator_api.py`` (SQLite and
PostgreSQL).
"""

from __future__ import annotations

import random
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

FINISHED = ("Completed", "Completed", "Completed", "Released", "Cancelled")
LATEST = [("Completed", 55), ("Running", 10), ("Queued", 3), ("FailedHolding", 4), ("Failed", 3), ("Released", 3),
          ("Cancelled", 2)]

HOST_COLUMNS = ("id", "name", "mac", "boot_provider", "created_at", "updated_at")
RUN_COLUMNS = ("id", "host_id", "state", "version", "agent_token_hash", "profile", "non_destructive", "override_flags_json",
               "result", "current_stage", "failed_stage", "reason", "started_at", "state_changed_at", "completed_at",
               "hold_expires_at", "hold_ip")
_TIMESTAMPS = {"created_at", "updated_at", "started_at", "state_changed_at", "completed_at", "hold_expires_at"}


def fleet_rows(hosts: int, seed: int = 7) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Host rows and run rows (``HOST_COLUMNS``, ``RUN_COLUMNS``); timestamps are aware
    datetimes and booleans are ``bool``, so each engine's writer converts them its way."""
    rnd = random.Random(seed)
    now = datetime.now(UTC)
    states, weights = zip(*LATEST)
    host_rows, run_rows = [], []
    run_id = 0
    for h in range(1, hosts + 1):
        host_rows.append((h, f"rack{h // 40:03d}-node{h % 40:02d}-{h}", f"02:{h >> 24 & 255:02x}:{h >> 16 & 255:02x}:"
                          f"{h >> 8 & 255:02x}:{h & 255:02x}:00", "manual", now, now))
        if rnd.random() < 0.2:
            continue  # never ran
        n = rnd.randint(1, 3)
        for i in range(n):
            run_id += 1
            last = i == n - 1
            state = rnd.choices(states, weights)[0] if last else rnd.choice(FINISHED)
            started = now - timedelta(hours=rnd.uniform(0.1, 24 * 30))
            done = state in ("Completed", "Released", "Cancelled", "Failed", "FailedHolding")
            result = {"Completed": rnd.choice(["pass", "pass", "pass", "fail"]), "Released": "fail", "Cancelled": "cancelled",
                      "Failed": "fail", "FailedHolding": "fail"}.get(state)
            run_rows.append((
                run_id, h, state, 0, f"hash-{run_id}", "quick", True, "{}", result,
                "Running" if state == "Running" else None, "SMART" if state in ("Failed", "FailedHolding") else None,
                "agent lost: no heartbeat for 61s" if state == "Failed" and rnd.random() < 0.5 else None,
                started, started + timedelta(minutes=3), started + timedelta(minutes=20) if done else None,
                now + timedelta(hours=rnd.uniform(0.5, 24)) if state == "FailedHolding" else None,
                "10.0.0.9" if state == "FailedHolding" else None,
            ))
    return host_rows, run_rows


def _insert(table: str, columns: tuple[str, ...], marks: list[str]) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(marks)})"


def fill_sqlite(db_path: Path, hosts: int, seed: int = 7) -> int:
    """The fleet written into a SQLite file (the server's text timestamps); returns the run count."""
    host_rows, run_rows = fleet_rows(hosts, seed)

    def text(columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        ts = [c in _TIMESTAMPS for c in columns]
        return [tuple(v.isoformat(timespec="microseconds") if t and v is not None else
                      int(v) if isinstance(v, bool) else v for v, t in zip(row, ts)) for row in rows]

    with sqlite3.connect(db_path) as conn:
        conn.executemany(_insert("hosts", HOST_COLUMNS, ["?"] * len(HOST_COLUMNS)), text(HOST_COLUMNS, host_rows))
        conn.executemany(_insert("runs", RUN_COLUMNS, ["?"] * len(RUN_COLUMNS)), text(RUN_COLUMNS, run_rows))
    return len(run_rows)


async def fill_postgres(url: str, hosts: int, seed: int = 7) -> int:
    """The fleet written into a PostgreSQL database (asyncpg ``copy_records_to_table``);
    the id sequences are moved past the rows so the server's own inserts do not collide.
    Returns the run count."""
    import asyncpg

    host_rows, run_rows = fleet_rows(hosts, seed)
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.copy_records_to_table("hosts", records=host_rows, columns=list(HOST_COLUMNS))
            await conn.copy_records_to_table("runs", records=run_rows, columns=list(RUN_COLUMNS))
            for table in ("hosts", "runs"):
                await conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                   f"(SELECT coalesce(max(id), 0) + 1 FROM {table}), false)")
    finally:
        await conn.close()
    return len(run_rows)
