"""Ingest benchmark: a real server process on SQLite, N simulated agents over loopback HTTP.

    .venv/bin/python bench/ingest.py                       # 2,000 agents, 20 s
    .venv/bin/python bench/ingest.py --agents 10000 --duration 30

What it does:

1. starts ``python -m vetting_server serve`` on a fresh SQLite file (a real process);
2. registers N hosts and starts N runs through the operator API (the host's expected
   spec carries threshold overrides, so every sample is judged by at least one rule);
   the sensor agents also say hello and claim (Running);
3. for ``--hb-only`` seconds every agent only heartbeats (latency without ingest load);
   then for ``--duration`` seconds: every agent heartbeats every ``--hb-interval`` seconds
   (spread evenly, so N/interval heartbeats per second) while ``--sensor-agents``
   agents post sensor batches of ``--batch`` samples back to back (each waits for the
   acknowledgement, which the server sends only after the batch is committed);
4. prints: samples judged+stored per second, heartbeat p50/p99 latency, 5xx count,
   rows in the database vs samples acknowledged, and — in the same run — the rate of
   plain ``sqlite3.executemany`` inserting the same rows into a fresh file with the same
   schema and indexes, and the ratio; and the CPU the server process, its SQLite
   writer process and this client (both its processes) used during ingest, per sample
   (a figure the machine's load moves far less than throughput: use it to compare two
   versions; the client's share is what real agents, on their own machines, would not
   take from the server); with ``--hb-only``, the server's CPU per heartbeat alone.

The client is a minimal HTTP/1.1 keep-alive client on asyncio (httpx would be the
bottleneck), and each sensor agent's batches are encoded before the timed phase (a real
agent encodes on its own machine; here every CPU cycle the client spends is one the
server does not get). During the mixed phase the heartbeating agents run in a second client
process, so that building sensor batches never delays a heartbeat's own timing.
Heartbeats share a pool of ``--connections`` connections (a real fleet has
one connection per agent; the server's per-request work is the same).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import random
import resource
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
from datetime import UTC, datetime, timedelta

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.server import ServerProcess  # noqa: E402

SPEC = """\
thresholds:
  - {stage: "*", kind: temp, key: "cpu/*", op: lt, threshold: 95, unit: C}
  - {stage: "*", kind: power, key: "*", op: lte, threshold: 800, unit: W, severity: warning}
"""


class Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; requests on it are sequential. A bare
    protocol (no stream reader, no line-by-line parsing): the client shares this
    machine's two cores with the server, and every cycle it spends is one the server
    does not get (real agents run on their own machines)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("closed"))

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        lines = bytes(buf[:end]).lower().split(b"\r\n")
        length = 0
        for line in lines[1:]:
            if line.startswith(b"content-length:"):
                length = int(line[15:])
        if len(buf) < end + 4 + length:
            return
        status = int(lines[0].split()[1])
        body = bytes(buf[end + 4 : end + 4 + length])
        del buf[: end + 4 + length]
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((status, body))

    async def post(self, path: str, token: str, body: bytes) -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        for attempt in (1, 2):
            try:
                if self.transport is None:
                    await loop.create_connection(lambda: self, self.host, self.port)
                self.waiter = loop.create_future()
                self.transport.write(  # type: ignore[union-attr]
                    b"POST %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"
                    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                    % (path.encode(), self.host.encode(), token.encode(), len(body), body)
                )
                return await self.waiter
            except (ConnectionError, OSError):
                if self.transport is not None:
                    self.transport.close()
                self.transport = None
                self.buf.clear()
                if attempt == 2:
                    raise
        raise AssertionError


BASE = datetime(2026, 11, 23, tzinfo=UTC)
PRE_ENCODED = 8  # distinct batches per sensor agent, encoded before the timed phase
KINDS = [("power", f"psu{i % 2}", "W") if i % 8 == 7 else ("temp", f"cpu/{i % 64}", "C") for i in range(100_000)]


def batch_samples(agent: int, seq: int, batch: int) -> list[list]:
    """One batch of an agent: timestamps move forward (1 ms apart), like a real sidecar's."""
    t0 = BASE + timedelta(seconds=agent, milliseconds=seq * batch)
    out = []
    for i in range(batch):
        kind, key, unit = KINDS[i]
        value = 300.0 + (i % 50) if kind == "power" else 40.0 + (i % 40)
        out.append([t0 + timedelta(milliseconds=i), "CPUStress", kind, key, value, unit, None])
    return out


async def setup(srv: ServerProcess, n: int, sensor_agents: int, conc: int) -> list[tuple[int, str]]:
    runs: list[tuple[int, str] | None] = [None] * n
    sem = asyncio.Semaphore(conc)
    async with httpx.AsyncClient(base_url=srv.base_url, headers={"Authorization": f"Bearer {srv.token}"}, timeout=60) as c:
        async def one(i: int) -> None:
            async with sem:
                mac = "02:00:%02x:%02x:%02x:%02x" % ((i >> 24) & 255, (i >> 16) & 255, (i >> 8) & 255, i & 255)
                r = await c.post("/api/v1/hosts", json={"name": f"bench{i}", "mac": mac, "expected_spec_yaml": SPEC})
                r.raise_for_status()
                r = await c.post("/api/v1/runs", json={"host_id": r.json()["id"], "profile": "quick",
                                                       "non_destructive": True, "stages": ["CPUStress"]})
                r.raise_for_status()
                run_id, tok = r.json()["run"]["id"], r.json()["agent_token"]
                if i < sensor_agents:
                    h = {"Authorization": f"Bearer {tok}"}
                    (await c.post(f"/api/v1/runs/{run_id}/hello", json={"agent_version": "bench", "hostname": f"bench{i}"}, headers=h)).raise_for_status()
                    (await c.post(f"/api/v1/runs/{run_id}/claim", json={"agent_version": "bench", "hostname": f"bench{i}"}, headers=h)).raise_for_status()
                runs[i] = (run_id, tok)

        await asyncio.gather(*(one(i) for i in range(n)))
    return [r for r in runs if r is not None]


def _hb_process(port: int, runs: list[tuple[int, str]], args: argparse.Namespace, duration: float, out: Any) -> None:
    """Heartbeating agents in their own process (as they are on their own machines),
    so that building sensor batches in the client never delays a heartbeat's timing."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    class _Srv:
        pass

    srv = _Srv()
    srv.port = port
    st = asyncio.run(load(srv, runs, args, sensors=False, heartbeats=True, duration=duration))
    out.put({"hb": st["hb"], "hb_5xx": st["hb_5xx"], "4xx": st["4xx"], "elapsed": st["elapsed"]})


async def load_split(srv: ServerProcess, runs: list[tuple[int, str]], args: argparse.Namespace) -> dict:
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    proc = ctx.Process(target=_hb_process, args=(srv.port, runs, args, args.duration, q))
    proc.start()
    st = await load(srv, runs, args, sensors=True, heartbeats=False)
    hb = await asyncio.get_running_loop().run_in_executor(None, q.get)
    proc.join()
    st["hb"], st["hb_5xx"] = hb["hb"], hb["hb_5xx"]
    st["4xx"] += hb["4xx"]
    return st


async def load(srv: Any, runs: list[tuple[int, str]], args: argparse.Namespace, *, sensors: bool = True,
               duration: float | None = None, heartbeats: bool = True) -> dict:
    port = srv.port
    stats = {"acked": 0, "sent": 0, "batches": 0, "dups": 0, "5xx": 0, "4xx": 0, "hb": [], "hb_5xx": 0, "breaches": 0}
    enc = msgspec.json.Encoder()

    # A real agent encodes its batches on its own machine: here every agent's batches are
    # encoded before the clock starts (PRE_ENCODED distinct ones, cycled with a fresh seq
    # each time), so that the client's own work takes as little of the shared CPU as it can.
    n_sensor = args.sensor_agents if sensors else 0
    encoded = {
        agent: [enc.encode(batch_samples(agent, k + 1, args.batch)) for k in range(PRE_ENCODED)]
        for agent in range(n_sensor)
    }
    stop_at = time.monotonic() + (duration or args.duration)

    async def sensor_agent(agent: int, run_id: int, tok: str) -> None:
        conn = Conn("127.0.0.1", port)
        seq = 0
        mine = encoded[agent]
        while time.monotonic() < stop_at:
            seq += 1
            body = b'{"seq":%d,"samples":%b}' % (seq, mine[seq % PRE_ENCODED])
            status, data = await conn.post(f"/api/v1/runs/{run_id}/sensor", tok, body)
            stats["sent"] += args.batch
            if status >= 500:
                stats["5xx"] += 1
            elif status >= 400:
                stats["4xx"] += 1
            else:
                ack = msgspec.json.decode(data)
                stats["acked"] += ack["stored"]
                stats["batches"] += 1
                stats["breaches"] += ack["breaches"]
                stats["dups"] += ack["duplicate"]

    pool: asyncio.Queue[Conn] = asyncio.Queue()
    for _ in range(args.connections):
        pool.put_nowait(Conn("127.0.0.1", port))

    async def heartbeat(run_id: int, tok: str) -> None:
        conn = await pool.get()
        try:
            t = time.perf_counter()
            status, _ = await conn.post(f"/api/v1/runs/{run_id}/heartbeat", tok, HEARTBEAT)
            stats["hb"].append(time.perf_counter() - t)
            if status >= 500:
                stats["hb_5xx"] += 1
            elif status >= 400:
                stats["4xx"] += 1
        finally:
            pool.put_nowait(conn)

    async def beat_all() -> None:
        # each agent beats every hb_interval seconds, spread evenly over the interval
        order = list(runs)
        random.shuffle(order)
        gap = args.hb_interval / max(1, len(order))
        start = time.monotonic()
        tasks = set()
        k = 0
        while time.monotonic() < stop_at:
            due = start + k * gap
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            run_id, tok = order[k % len(order)]
            task = asyncio.ensure_future(heartbeat(run_id, tok))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            k += 1
        if tasks:
            await asyncio.gather(*tasks)

    t0 = time.monotonic()
    jobs = [sensor_agent(i, r, t) for i, (r, t) in enumerate(runs[:n_sensor])]
    if heartbeats:
        jobs.append(beat_all())
    await asyncio.gather(*jobs)
    stats["elapsed"] = time.monotonic() - t0
    return stats


HEARTBEAT = b'{"stage":"CPUStress","progress":0.5,"last_rtt_s":0.0012}'
"""What a real agent sends: its previous heartbeat's round trip too (the server's latency
histogram observes it; an older server ignores the field)."""


def scraper(url: str, every_s: float, stop: threading.Event, out: list[tuple[int, float, int]]) -> None:
    """GET /metrics every ``every_s`` seconds, as Prometheus would, during the ingest."""
    while not stop.wait(every_s):
        t = time.perf_counter()
        try:
            r = httpx.get(url, timeout=10)
            out.append((r.status_code, time.perf_counter() - t, len(r.content)))
        except httpx.HTTPError:
            out.append((0, time.perf_counter() - t, 0))


def cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of the server process and of each child (the SQLite
    writer), from /proc: a figure the machine's noise moves far less than throughput."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)"
            p = int(stat.parent.name)
            if p != pid and int(fields[1]) != pid:  # neither the server nor its child
                continue
            if p == pid:
                name = "server"
            else:
                name = "writer" if b"vetting_server.ingest.sqlite" in (stat.parent / "cmdline").read_bytes() else f"child {p}"
            out[name] = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass  # a process that exited meanwhile
    return out


def client_cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (the heartbeat process,
    once joined; the server is a child too, but not a finished one)."""
    me, done = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + done.ru_utime + done.ru_stime


def raw_sqlite_rate(n_rows: int, batch: int) -> float:
    """Plain sqlite3.executemany of the same rows into a fresh file with the same schema."""
    from vetting_server.db.migrate import available, render

    with tempfile.TemporaryDirectory() as d:
        conn = sqlite3.connect(os.path.join(d, "raw.db"), isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        for _, path in available():
            for stmt in render(path.read_text(), "sqlite"):
                conn.execute(stmt)
        conn.execute("INSERT INTO hosts (name, mac, created_at, updated_at) VALUES ('h', 'm', 'x', 'x')")
        conn.execute("INSERT INTO runs (host_id, state, agent_token_hash, non_destructive, started_at, state_changed_at) VALUES (1, 'Running', 't', 1, 'x', 'x')")
        conn.execute("INSERT INTO stages (run_id, name, ordinal, destructive, timeout_s) VALUES (1, 'CPUStress', 0, 0, 1)")
        sql = "INSERT INTO measurements (run_id, stage_id, ts, kind, key, value, unit, text) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        groups = []  # prepared before timing: 20 agents' batches per transaction, as the server groups them
        n_batches = max(1, n_rows // batch)
        for g in range(0, n_batches, 20):
            rows = []
            for b in range(g, min(g + 20, n_batches)):
                agent, seq = b % 20, b // 20 + 1
                rows += [(agent + 1, 1, s[0].timestamp(), s[2], s[3], s[4], s[5], s[6])
                         for s in batch_samples(agent, seq, batch)]
            groups.append(rows)
        done = 0
        t = time.perf_counter()
        for rows in groups:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(sql, rows)
            conn.execute("COMMIT")
            done += len(rows)
        elapsed = time.perf_counter() - t
        conn.close()
    return done / elapsed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--agents", type=int, default=2000)
    p.add_argument("--sensor-agents", type=int, default=60, help="agents streaming sensor batches back to back")
    p.add_argument("--batch", type=int, default=1000, help="samples per sensor batch")
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--hb-interval", type=float, default=10.0)
    p.add_argument("--connections", type=int, default=256, help="heartbeat connection pool")
    p.add_argument("--hb-only", type=float, default=10.0, help="seconds of heartbeats without sensor load first (0: skip)")
    p.add_argument("--setup-concurrency", type=int, default=32)
    p.add_argument("--keep", help="keep the server's directory here")
    p.add_argument("--scrape", type=float, default=0.0, help="GET /metrics every S seconds during the ingest (0: never)")
    args = p.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="vetting-bench-"))
    srv = ServerProcess(tmp, settings={"logging": {"level": "warning"}, "dispatcher": {"interval_s": 2.0}})
    print(f"machine: {os.cpu_count()} CPUs (shared with other work: figures are noisy); server dir {tmp}")
    with srv:
        t = time.monotonic()
        runs = asyncio.run(setup(srv, args.agents, args.sensor_agents, args.setup_concurrency))
        print(f"setup: {len(runs)} hosts + runs in {time.monotonic() - t:.1f}s")
        quiet = None
        if args.hb_only > 0:
            hb0 = cpu_seconds(srv.proc.pid)
            quiet = asyncio.run(load(srv, runs, args, sensors=False, duration=args.hb_only))
            hb_cpu = cpu_seconds(srv.proc.pid)["server"] - hb0["server"]
        scrapes: list[tuple[int, float, int]] = []
        stop = threading.Event()
        if args.scrape > 0:
            threading.Thread(target=scraper, args=(f"{srv.base_url}/metrics", args.scrape, stop, scrapes), daemon=True).start()
        cpu0, client0 = cpu_seconds(srv.proc.pid), client_cpu_seconds()
        st = asyncio.run(load_split(srv, runs, args))
        cpu1, client1 = cpu_seconds(srv.proc.pid), client_cpu_seconds()
        stop.set()
    db = sqlite3.connect(str(srv.db_path))
    rows = db.execute("SELECT count(*) FROM measurements").fetchone()[0]
    evals = db.execute("SELECT count(*) FROM threshold_evaluations").fetchone()[0]
    tallied = db.execute("SELECT coalesce(sum(passed_count + breach_count), 0) FROM threshold_tallies").fetchone()[0]
    db.close()
    hb = sorted(st["hb"])
    rate = st["acked"] / st["elapsed"]
    raw = raw_sqlite_rate(max(200_000, min(rows, 1_000_000)), args.batch)
    q = statistics.quantiles(hb, n=100) if len(hb) >= 100 else None
    print(f"agents: {len(runs)} heartbeating every {args.hb_interval:g}s, {args.sensor_agents} streaming batches of {args.batch}")
    print(f"duration: {st['elapsed']:.1f}s")
    print(f"samples judged+stored: {st['acked']:,} ({rate:,.0f}/s) in {st['batches']:,} batches; "
          f"{tallied:,} judgements tallied, {evals:,} breach rows")
    if quiet is not None and len(quiet["hb"]) >= 100:
        qh = sorted(quiet["hb"])
        print(f"heartbeats alone ({args.hb_only:g}s, no sensor load): {len(qh):,} ({len(qh) / quiet['elapsed']:,.0f}/s), "
              f"p50 {statistics.median(qh) * 1000:.1f} ms, p99 {statistics.quantiles(qh, n=100)[98] * 1000:.1f} ms, "
              f"5xx {quiet['hb_5xx']}; server CPU {hb_cpu / quiet['elapsed'] * 100:.0f}% of a core "
              f"({hb_cpu / len(qh) * 1e6:.0f} µs per heartbeat)")
    if q:
        print(f"heartbeats during ingest: {len(hb):,} ({len(hb) / st['elapsed']:,.0f}/s), p50 {statistics.median(hb) * 1000:.1f} ms, "
              f"p99 {q[98] * 1000:.1f} ms, max {hb[-1] * 1000:.1f} ms")
    if st["acked"]:
        used = {k: v - cpu0.get(k, 0.0) for k, v in cpu1.items()}  # a writer started meanwhile counts from 0
        used["client"] = client1 - client0
        print("CPU during ingest: " + ", ".join(
            f"{k} {v / st['elapsed'] * 100:.0f}% of a core ({v / st['acked'] * 1e6:.2f} µs per sample)" for k, v in used.items()))
    if scrapes:
        codes = sorted({c for c, _, _ in scrapes})
        print(f"/metrics scraped every {args.scrape:g}s: {len(scrapes)} times, status {codes}, "
              f"{statistics.mean(t for _, t, _ in scrapes) * 1000:.1f} ms mean, "
              f"{max(t for _, t, _ in scrapes) * 1000:.1f} ms max, {scrapes[-1][2]:,} bytes")
    print(f"errors: 5xx {st['5xx'] + st['hb_5xx']}, 4xx {st['4xx']}, duplicates {st['dups']}")
    print(f"rows in DB: {rows:,} vs acknowledged {st['acked']:,} (sent {st['sent']:,}; "
          f"lost {st['acked'] - rows:,})")
    print(f"raw sqlite3.executemany of the same rows: {raw:,.0f} rows/s; server/raw ratio {rate / raw:.2f}")
    return 0 if rows == st["acked"] and st["5xx"] + st["hb_5xx"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
