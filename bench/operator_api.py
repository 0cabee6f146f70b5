"""Operator API latency at 10,000 hosts: list/show/create host and list runs, vs 100 hosts.

    .venv/bin/python bench/operator_api.py                              # SQLite, 10,000 hosts vs 100, 200 requests
    .venv/bin/python bench/operator_api.py --hosts 200 --requests 20    # a quick try
    .venv/bin/python bench/operator_api.py --database-url postgresql://postgres@127.0.0.1:5432/vetting_opbench

Issue 20 moves the operator's cold paths (hosts, run listings, ...) from hand-written SQL
to Piccolo and asks that these routes stay within 2x of today's figures or under 20 ms
p99, whichever is larger. This measures them, the same way before and after.

What it does:

1. starts two ``vetting serve`` processes (``tests/support/server.py``): one for the
   fleet (``--hosts``) and one for the baseline (``--baseline`` hosts; same code, same
   machine, same run), each on a fresh SQLite file, or with ``--database-url`` on
   PostgreSQL: the benchmark creates that database and ``<name>_base`` (it refuses
   names that exist and anything but loopback) and drops both at the end;
2. fills both straight into the database with ``bench/fleet.py`` (SQLite:
   ``executemany``; PostgreSQL: ``COPY``): per host 0 to 3 runs in a spread of states;
3. with the operator token, over loopback HTTP (``httpx``, one keep-alive connection per
   server), times ``--requests`` requests of each route after ``--warmup`` untimed ones,
   alternating fleet and baseline request by request (so both see the same machine):

   - ``GET /api/v1/hosts`` (list, default page: 100 by name, and the total),
   - ``GET /api/v1/hosts/{id}`` (show, random existing ids),
   - ``POST /api/v1/hosts`` (create, fresh names and MACs; also refreshes the PXE
     allowlist, as every create does),
   - ``GET /api/v1/runs`` (list, default page: 50 newest, and the total);

4. prints p50/p99/max per route for the fleet and the baseline, and the fleet/baseline
   ratios of p50 and p99. Each reply is checked (status, page size, total).

The times are the client's: request sent to reply read, loopback included. The machine's
load moves them; compare versions in the same hour, ideally interleaved.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.fleet import fill_postgres, fill_sqlite  # noqa: E402
from tests.support.server import ServerProcess  # noqa: E402

ROUTES = ("list hosts", "show host", "create host", "list runs")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def q(values: list[float], p: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


class Target:
    """One server under test: its process, its host count and the next fresh host to create."""

    def __init__(self, name: str, srv: ServerProcess, hosts: int) -> None:
        self.name, self.srv, self.hosts = name, srv, hosts
        self.created = 0
        self.rnd = random.Random(11)

    def request(self, route: str) -> tuple[str, str, dict[str, Any] | None]:
        if route == "list hosts":
            return "GET", "/api/v1/hosts", None
        if route == "show host":
            return "GET", f"/api/v1/hosts/{self.rnd.randint(1, self.hosts)}", None
        if route == "list runs":
            return "GET", "/api/v1/runs", None
        self.created += 1
        n = self.created
        return "POST", "/api/v1/hosts", {"name": f"bench-new-{n}", "mac": f"06:bb:{n >> 16 & 255:02x}:{n >> 8 & 255:02x}:"
                                                                            f"{n & 255:02x}:01"}

    def check(self, route: str, r: Any, runs: int) -> None:
        want = 201 if route == "create host" else 200
        assert r.status_code == want, f"{self.name} {route}: {r.status_code} {r.text[:300]}"
        body = r.json()
        if route == "list hosts":
            assert body["total"] == self.hosts + self.created and len(body["items"]) == min(100, body["total"]), body["total"]
        elif route == "list runs":
            assert body["total"] == runs and len(body["items"]) == min(50, runs), body["total"]
        else:
            assert body["id"] and body["name"], body


def pg_admin(url: str) -> tuple[str, str]:
    """The maintenance database's URL on the same server, and the database name in ``url``."""
    parts = urlsplit(url)
    if parts.hostname not in LOOPBACK:
        raise SystemExit(f"--database-url: {parts.hostname!r} is not loopback; this benchmark talks only to loopback")
    name = parts.path.lstrip("/")
    if not name.replace("_", "").isalnum():
        raise SystemExit(f"--database-url: database name {name!r}: letters, digits and _ only")
    return urlunsplit(parts._replace(path="/postgres")), name


async def pg_exec(admin_url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, default=10_000)
    ap.add_argument("--baseline", type=int, default=100)
    ap.add_argument("--requests", type=int, default=200, help="timed requests per route and server")
    ap.add_argument("--warmup", type=int, default=20, help="untimed requests per route and server first")
    ap.add_argument("--database-url", help="postgresql://postgres@127.0.0.1:5432/NAME: created here, and NAME_base; "
                                           "both dropped at the end (default: SQLite files in a temporary directory)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="vetting-opbench-"))
    urls: dict[str, str | None] = {"fleet": None, "baseline": None}
    admin = None
    if args.database_url:
        admin, name = pg_admin(args.database_url)
        urls = {"fleet": args.database_url, "baseline": args.database_url.rsplit("/", 1)[0] + f"/{name}_base"}
    made: list[str] = []
    targets: dict[str, Target] = {}
    runs: dict[str, int] = {}
    try:
        for name, url in urls.items():
            if admin and url:
                db = url.rsplit("/", 1)[1]
                asyncio.run(pg_exec(admin, f'CREATE DATABASE "{db}"'))
                made.append(db)
            srv = ServerProcess(tmp / name, database_url=url, settings={"logging": {"level": "warning"}})
            hosts = args.hosts if name == "fleet" else args.baseline
            targets[name] = Target(name, srv, hosts)
            srv.start()
            t = time.perf_counter()
            runs[name] = asyncio.run(fill_postgres(url, hosts)) if url else fill_sqlite(srv.db_path, hosts)
            print(f"{name}: {hosts:,} hosts, {runs[name]:,} runs on {'PostgreSQL' if url else 'SQLite'} "
                  f"(written in {time.perf_counter() - t:.1f} s)", flush=True)

        took: dict[str, dict[str, list[float]]] = {n: {r: [] for r in ROUTES} for n in targets}
        t_all = time.perf_counter()
        for route in ROUTES:
            for i in range(args.warmup + args.requests):
                for tg in (targets.values() if i % 2 else reversed(list(targets.values()))):
                    method, path, body = tg.request(route)
                    t = time.perf_counter()
                    r = tg.srv.api(method, path, json=body)
                    ms = (time.perf_counter() - t) * 1000
                    tg.check(route, r, runs[tg.name])
                    if i >= args.warmup:
                        took[tg.name][route].append(ms)
        print(f"\n{args.requests} requests per route and server after {args.warmup} warm-up, alternating "
              f"({time.perf_counter() - t_all:.0f} s); ms:")
        print(f"{'':14} {'fleet p50':>10} {'p99':>8} {'max':>8}   {'base p50':>9} {'p99':>8} {'max':>8}   "
              f"{'ratio p50':>9} {'p99':>6}")
        for route in ROUTES:
            f, b = took["fleet"][route], took["baseline"][route]
            print(f"{route:14} {q(f, 50):10.2f} {q(f, 99):8.2f} {max(f):8.2f}   {q(b, 50):9.2f} {q(b, 99):8.2f} "
                  f"{max(b):8.2f}   {q(f, 50) / q(b, 50):8.2f}x {q(f, 99) / q(b, 99):5.2f}x")
        print(f"\nfleet: {args.hosts:,} hosts (+{targets['fleet'].created} created), {runs['fleet']:,} runs; "
              f"baseline: {args.baseline:,} hosts (+{targets['baseline'].created}), {runs['baseline']:,} runs")
    finally:
        for tg in targets.values():
            tg.srv.close()
        for db in made:
            try:
                asyncio.run(pg_exec(admin, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
            except Exception as exc:  # noqa: BLE001 - report, keep dropping the others
                print(f"could not drop database {db}: {exc}", file=sys.stderr)


if __name__ == "__main__":
    main()
