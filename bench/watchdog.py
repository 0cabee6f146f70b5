"""Watchdog benchmark: one pass of the scheduler's watchdog over a fleet of healthy runs.

    .venv/bin/python bench/watchdog.py                 # 10,000 Running runs, SQLite
    .venv/bin/python bench/watchdog.py --runs 2000

The watchdog runs every second in the serving process (boot, heartbeat and stage
timeouts, stuck reports). This fills a fresh SQLite database with ``--runs`` runs that
are Running, heartbeating and inside their stage's timeout (copies of one real run made
through the API), then times ``Scheduler.watchdog_once`` and prints the median and the
share of one core it takes at one pass per second.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.server.conftest import Env, create_operator_token, make_settings, serve_in_process  # noqa: E402


async def main(n: int, passes: int) -> None:
    from vetting_server.app import create_app
    from vetting_server.db.database import utcnow

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        app = create_app(make_settings(f"sqlite:///{tmp / 'vetting.db'}", tmp, dispatcher={"interval_s": 3600}))
        async with serve_in_process(app) as client:
            rt = app.state.rt
            env = Env(app, client, await create_operator_token(rt))
            run_id, _ = await env.running(profile="quick", non_destructive=True, stages=["CPUStress"])
            cols = [r["name"] for r in await rt.db.fetch("SELECT name FROM pragma_table_info('runs')") if r["name"] != "id"]
            listed = ", ".join(cols)
            copied = ", ".join("agent_token_hash || c.n" if c == "agent_token_hash" else c for c in cols)
            async with rt.db.transaction() as tx:
                await tx.execute("UPDATE runs SET last_heartbeat_at = $2 WHERE id = $1", run_id, utcnow())
                await tx.execute(
                    f"WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < $2) "
                    f"INSERT INTO runs ({listed}) SELECT {copied} FROM runs, c WHERE runs.id = $1",
                    run_id, n - 1,
                )
                await tx.execute(
                    "INSERT INTO stages (run_id, name, ordinal, state, runs_on, destructive, timeout_s, params_json, "
                    "attempt, started_at) SELECT r.id, s.name, s.ordinal, s.state, s.runs_on, s.destructive, s.timeout_s, "
                    "s.params_json, s.attempt, s.started_at FROM runs r JOIN stages s ON s.run_id = $1 WHERE r.id <> $1",
                    run_id,
                )
            running = await rt.db.fetchval("SELECT count(*) FROM runs WHERE state = 'Running'")
            times = []
            for _ in range(passes):
                t = time.perf_counter()
                await rt.scheduler.watchdog_once()
                times.append(time.perf_counter() - t)
            failed = await rt.db.fetchval("SELECT count(*) FROM runs WHERE state <> 'Running'")
    med = statistics.median(times)
    print(f"runs: {running:,} Running, heartbeating, inside their stage timeout")
    print(f"watchdog pass: median {med * 1000:.1f} ms over {passes} passes "
          f"(min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f}): {med * 100:.1f}% of a core at one pass a second")
    print(f"runs failed by the watchdog: {failed} (expected 0)")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=10_000)
    p.add_argument("--passes", type=int, default=20)
    a = p.parse_args()
    asyncio.run(main(a.runs, a.passes))
