"""Sensor and log ingest: judge every sample, store every batch once, ack after commit.

Design (why it is fast):

- The request handler decodes the batch (msgspec), judges it with the run's
  :class:`~vetting_core.thresholds.ThresholdEngine` and builds plain row tuples;
  then it hands the batch to **one writer task** and waits.
- The writer takes everything queued (many batches from many agents) and writes it
  in **one transaction** (group commit): per batch an ``INSERT … ON CONFLICT DO
  NOTHING`` into ``batches`` (run, stream, seq) decides "new or retried", then the
  rows go in with driver-level bulk calls — ``sqlite3.executemany`` in the writer
  thread on SQLite, ``COPY`` (asyncpg ``copy_records_to_table``) and ``executemany``
  on PostgreSQL. Only after ``COMMIT`` are the waiting requests answered, so an
  acknowledged batch is durable and a retried one is stored once.
- If a group fails, its batches are retried one by one so one bad batch cannot take
  others down with it.

SQLite bulk path: multi-row ``INSERT … VALUES`` (see :func:`_insert_values`). Measured
alternatives on this 2-core machine: ``executemany`` (slower, and it re-takes the GIL
for every row); one JSON text parameter expanded by ``json_each`` (SQLite parses it
without the GIL: ≈5 % lower throughput, ≈10 ms lower heartbeat p99 — not worth the
float round trip through text).

Threshold evaluations: every **breach** is stored per sample in
``threshold_evaluations``; **passes** are aggregated per (threshold, stage, key) in
``threshold_tallies`` (count of passes and breaches, min/max observed, first/last
timestamp). Storing a pass row per sample would double the write volume for no
reader: reports and the API show breaches individually and passes as counts.
"""

from __future__ import annotations

import gc
import math
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio
import anyio.to_thread
import structlog

from vetting_core.model import Measurement
from vetting_core.protocol import LogLine
from vetting_core.thresholds import EvaluationResult, ThresholdEngine

from .database import epoch, iso, utcnow
from .runtime import Runtime

log = structlog.get_logger()

MAX_GROUP_ROWS = 200_000
THREAD_THRESHOLD = 200  # samples: smaller batches are judged inline

_INS_BATCH = (
    "INSERT INTO batches (run_id, stream, seq, count, breaches, received_at) VALUES ($1, $2, $3, $4, $5, $6) "
    "ON CONFLICT DO NOTHING"
)
_INS_MEAS = "INSERT INTO measurements (run_id, stage_id, ts, kind, key, value, unit, text) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
_MEAS_COLS = ("run_id", "stage_id", "ts", "kind", "key", "value", "unit", "text")
_INS_EVAL = (
    "INSERT INTO threshold_evaluations (run_id, threshold_id, stage_name, kind, key, ts, observed, observed_text, passed, severity) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
)
_INS_LOG = "INSERT INTO log_lines (run_id, stage, ts, level, message) VALUES ($1, $2, $3, $4, $5)"
_LOG_COLS = ("run_id", "stage", "ts", "level", "message")
_TALLY = {
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


_VALUES_CACHE: dict[tuple[str, int], str] = {}
MAX_SQLITE_PARAMS = 32000  # SQLite ≥ 3.32 allows 32766 bound parameters per statement


def _insert_values(conn: Any, insert_sql: str, rows: list[tuple[Any, ...]]) -> None:
    """Insert ``rows`` with multi-row ``VALUES`` statements (up to ~32k parameters each).

    Why not ``executemany``: it binds and steps row by row, releasing and re-taking the
    GIL around every row's step — under load the writer thread then waits for the GIL
    once per row. One statement per thousands of rows takes it a few times per group,
    and is faster even on an idle machine (measured ≈ 530k vs 360k rows/s).
    """
    head = insert_sql.split(" VALUES ", 1)[0]
    width = len(rows[0])
    per = max(1, MAX_SQLITE_PARAMS // width)
    for i in range(0, len(rows), per):
        chunk = rows[i : i + per]
        key = (head, len(chunk))
        sql = _VALUES_CACHE.get(key)
        if sql is None:
            one = "(" + ",".join("?" * width) + ")"
            sql = _VALUES_CACHE[key] = f"{head} VALUES {','.join([one] * len(chunk))}"
            if len(_VALUES_CACHE) > 256:
                _VALUES_CACHE.clear()
        conn.execute(sql, [v for row in chunk for v in row])


@dataclass
class _Item:
    run_id: int
    stream: str
    seq: int
    rows: list[tuple[Any, ...]]
    evals: list[tuple[Any, ...]] = field(default_factory=list)
    tallies: list[tuple[Any, ...]] = field(default_factory=list)
    breaches: int = 0
    duplicate: bool = False
    error: BaseException | None = None
    done: anyio.Event = field(default_factory=anyio.Event)


def _num(v: Any) -> float | None:
    if isinstance(v, float):
        return v if v == v and not math.isinf(v) else None
    if isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    return None


class Ingest:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.dialect = rt.db.dialect
        self._queue: deque[_Item] = deque()
        self._wake = anyio.Event()
        self.stats = {"groups": 0, "batches": 0, "rows": 0, "duplicates": 0}
        self._ts = epoch if self.dialect == "sqlite" else (lambda d: d)
        self._locks: dict[int, anyio.Lock] = {}
        self._judge_limiter = anyio.CapacityLimiter(2)

    # ---------------------------------------------------------------- row building
    def sample_rows(
        self, run_id: int, samples: list[Measurement], ev: EvaluationResult, engine: ThresholdEngine, stage_ids: dict[str, int]
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """Row tuples for measurements, breaches and tallies (the hot loop: keep it lean).

        The garbage collector is paused meanwhile: thousands of fresh tuples would
        otherwise trigger full-heap collections (the engine does the same)."""
        paused = gc.isenabled()
        if paused:
            gc.disable()
        try:
            return self._sample_rows(run_id, samples, ev, engine, stage_ids)
        finally:
            if paused:
                gc.enable()

    def _sample_rows(
        self, run_id: int, samples: list[Measurement], ev: EvaluationResult, engine: ThresholdEngine, stage_ids: dict[str, int]
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        get = stage_ids.get
        if self.dialect == "sqlite":
            if any(s.ts.tzinfo is None for s in samples):
                raise TypeError("a sample timestamp has no timezone")
            rows = [(run_id, get(s.stage), s.ts.timestamp(), s.kind, s.key, s.value, s.unit, s.text) for s in samples]
        else:
            rows = [(run_id, get(s.stage), s.ts, s.kind, s.key, s.value, s.unit, s.text) for s in samples]
        ts = self._ts
        evals: list[tuple[Any, ...]] = []
        rules = engine.rules
        for b in ev.breaches:
            s = samples[b.sample]
            rule = rules[b.rule]
            obs = b.observed
            num = _num(obs)
            evals.append((
                run_id, rule.id, s.stage, s.kind, s.key, ts(s.ts), num,
                None if num is not None or obs is None else str(obs)[:1000], False, getattr(rule.severity, "value", rule.severity),
            ))
        tallies = self._tallies(run_id, samples, ev, engine)
        return rows, evals, tallies

    def _tallies(self, run_id: int, samples: list[Measurement], ev: EvaluationResult, engine: ThresholdEngine) -> list[tuple[Any, ...]]:
        """Per (threshold, stage, key): passes, breaches, min/max observed, first/last ts —
        one row per chunk of the engine's result, summed with C-level builtins."""
        ts = self._ts
        rules = engine.rules
        spans: dict[int, tuple[Any, Any]] = {}  # a series' first/last ts, shared by its rules
        out: list[tuple[Any, ...]] = []
        for c in ev.chunks:
            span = spans.get(id(c.samples))
            if span is None:
                tss = [samples[i].ts for i in c.samples]
                span = spans[id(c.samples)] = (ts(min(tss)), ts(max(tss)))
            passed = sum(c.passed)
            # finite numbers only: NaN and inf (o - o is NaN) and texts are left out
            nums = [o for o in c.observed if (type(o) is float and o - o == 0.0) or type(o) is int]
            out.append((
                run_id, rules[c.rule].id, c.series[0], c.series[2], passed, len(c.samples) - passed,
                min(nums) if nums else None, max(nums) if nums else None, *span,
            ))
        return out

    def line_rows(self, run_id: int, lines: list[LogLine]) -> list[tuple[Any, ...]]:
        ts = self._ts
        return [(run_id, ln.stage, ts(ln.ts), ln.level[:20], ln.message[:65536]) for ln in lines]

    # ---------------------------------------------------------------- submitting
    async def sensor(self, run_id: int, seq: int, samples: list[Measurement]) -> tuple[int, bool, int]:
        """Judge and store one sensor batch. Returns (stored, duplicate, breaches)."""
        engine = await self.rt.engine(run_id)
        stage_ids = await self.rt.stage_id_map(run_id)

        def judge() -> tuple[Any, ...]:
            ev = engine.evaluate(samples, per_sample=False)
            return (*self.sample_rows(run_id, samples, ev, engine, stage_ids), len(ev.breaches))

        async with self.engine_lock(run_id):  # one engine per run is not thread-safe
            if len(samples) >= THREAD_THRESHOLD:
                # a big batch is judged in a worker thread: the event loop keeps answering
                # heartbeats meanwhile (the GIL switches every few ms) instead of queueing
                # them behind every batch
                rows, evals, tallies, n_breaches = await anyio.to_thread.run_sync(judge, limiter=self._judge_limiter)
            else:
                rows, evals, tallies, n_breaches = judge()
        item = _Item(run_id, "sensor", seq, rows, evals, tallies, breaches=n_breaches)
        await self._submit(item)
        return (0 if item.duplicate else len(rows)), item.duplicate, item.breaches

    def engine_lock(self, run_id: int) -> anyio.Lock:
        """Held while the run's engine judges (it keeps counter baselines; not thread-safe)."""
        lock = self._locks.get(run_id)
        if lock is None:
            lock = self._locks[run_id] = anyio.Lock()
        return lock

    def forget(self, run_id: int) -> None:
        self._locks.pop(run_id, None)

    async def logs(self, run_id: int, seq: int, lines: list[LogLine]) -> tuple[int, bool]:
        item = _Item(run_id, "log", seq, self.line_rows(run_id, lines))
        await self._submit(item)
        return (0 if item.duplicate else len(item.rows)), item.duplicate

    async def _submit(self, item: _Item) -> None:
        self._queue.append(item)
        self._wake.set()
        await item.done.wait()
        if item.error is not None:
            raise item.error

    # ---------------------------------------------------------------- inside other transactions
    async def write_samples_tx(self, tx: Any, run_id: int, samples: list[Measurement], ev: EvaluationResult, engine: ThresholdEngine) -> None:
        stage_ids = await self.rt.stage_id_map(run_id, db=tx)
        rows, evals, tallies = self.sample_rows(run_id, samples, ev, engine, stage_ids)
        await tx.executemany(_INS_MEAS, rows)
        await tx.executemany(_INS_EVAL, evals)
        await tx.executemany(_TALLY[self.dialect], tallies)

    async def write_lines_tx(self, tx: Any, run_id: int, lines: list[LogLine]) -> None:
        await tx.executemany(_INS_LOG, self.line_rows(run_id, lines))

    # ---------------------------------------------------------------- the writer
    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            while self._queue:
                group: list[_Item] = []
                n = 0
                while self._queue and n < MAX_GROUP_ROWS:
                    item = self._queue.popleft()
                    group.append(item)
                    n += len(item.rows)
                await self._write_group(group)

    async def _write_group(self, group: list[_Item]) -> None:
        try:
            await self._write(group)
        except Exception as exc:
            if len(group) == 1:
                group[0].error = exc
                log.error("ingest.batch_failed", run_id=group[0].run_id, stream=group[0].stream, seq=group[0].seq, error=str(exc))
            else:
                for item in group:  # isolate the bad batch
                    item.duplicate = False
                    try:
                        await self._write([item])
                    except Exception as exc2:
                        item.error = exc2
                        log.error("ingest.batch_failed", run_id=item.run_id, stream=item.stream, seq=item.seq, error=str(exc2))
        else:
            self.stats["groups"] += 1
            self.stats["batches"] += len(group)
        finally:
            for item in group:
                item.done.set()

    async def _write(self, group: list[_Item]) -> None:
        now = utcnow()
        async with self.rt.db.transaction() as tx:
            if self.dialect == "sqlite":
                await tx.run_sync(lambda conn: self._write_sqlite(conn, group, iso(now)))
            else:
                await self._write_pg(tx, group, now)

    def _write_sqlite(self, conn: Any, group: list[_Item], now: str) -> None:
        from .database import _sqlite_sql

        ins_batch = _sqlite_sql(_INS_BATCH)
        tally = _sqlite_sql(_TALLY["sqlite"])
        meas: list[tuple[Any, ...]] = []
        evals: list[tuple[Any, ...]] = []
        tallies: list[tuple[Any, ...]] = []
        lines: list[tuple[Any, ...]] = []
        for item in group:
            cur = conn.execute(ins_batch, (item.run_id, item.stream, item.seq, len(item.rows), item.breaches, now))
            if cur.rowcount != 1:
                item.duplicate = True
                continue
            if item.stream == "sensor":
                meas.extend(item.rows)
                evals.extend(item.evals)
                tallies.extend(item.tallies)
            else:
                lines.extend(item.rows)
        if meas:
            _insert_values(conn, _INS_MEAS, meas)
        if evals:
            _insert_values(conn, _INS_EVAL, evals)
        if tallies:
            conn.executemany(tally, tallies)
        if lines:
            _insert_values(conn, _INS_LOG, lines)
        self.stats["rows"] += len(meas) + len(lines)

    async def _write_pg(self, tx: Any, group: list[_Item], now: datetime) -> None:
        meas: list[tuple[Any, ...]] = []
        evals: list[tuple[Any, ...]] = []
        tallies: list[tuple[Any, ...]] = []
        lines: list[tuple[Any, ...]] = []
        for item in group:
            got = await tx.fetchval(
                _INS_BATCH + " RETURNING seq", item.run_id, item.stream, item.seq, len(item.rows), item.breaches, now
            )
            if got is None:
                item.duplicate = True
                continue
            if item.stream == "sensor":
                meas.extend(item.rows)
                evals.extend(item.evals)
                tallies.extend(item.tallies)
            else:
                lines.extend(item.rows)
        await tx.copy("measurements", _MEAS_COLS, meas)
        await tx.executemany(_INS_EVAL, evals)
        await tx.executemany(_TALLY["postgresql"], tallies)
        await tx.copy("log_lines", _LOG_COLS, lines)
        self.stats["rows"] += len(meas) + len(lines)
