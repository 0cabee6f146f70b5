"""The on-disk spool: nothing the agent measures is lost while the orchestrator is away.

Every outgoing log batch, sensor batch and stage result is first written to one SQLite
file (stdlib :mod:`sqlite3`, WAL, ``synchronous=FULL``) and only then sent. It is one
*ordered* outbox: entries are delivered strictly in the order they were written, so a
stage result reaches the orchestrator only after every batch produced before it has
been acknowledged (the result's ``log_seq``/``sensor_seq`` name the last of them).

Log and sensor batches get a per-stream sequence number (1, 2, 3...) when they are
written; the orchestrator stores a batch once per sequence number and acknowledges a
retried one as a duplicate, so "retry until acknowledged" can never store a sample
twice. An entry stays ``pending`` until the orchestrator acknowledges it (2xx), and
becomes ``rejected`` only on an answer that retrying cannot change (400/409/413/422);
the body of an acknowledged entry is dropped to keep the file small, its row (with its
item count) is kept so the agent can say how much it produced.

SQLite calls run in a worker thread (one at a time, through a capacity limiter) so the
event loop, the heartbeat and the stage keep running while the disk syncs. After an
agent restart the same file is reopened and the pending entries are sent again.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import msgspec

from vetting_core.model import Measurement
from vetting_core.protocol import ArtifactUpload, LogBatch, LogLine, SensorBatch, StageResult

KIND_LOG = "log"
KIND_SENSOR = "sensor"
KIND_RESULT = "result"
KIND_ARTIFACT = "artifact"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    kind     TEXT NOT NULL,            -- log | sensor | artifact | result
    seq      INTEGER,                  -- per-stream sequence number (batches only)
    stage    TEXT,
    items    INTEGER NOT NULL,         -- lines / samples in the batch (1 for a result)
    body     BLOB,                     -- the exact request body; NULL once acknowledged
    state    TEXT NOT NULL DEFAULT 'pending',   -- pending | acked | rejected
    reply    BLOB,
    error    TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created  REAL NOT NULL,
    done     REAL
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox(state, id);
CREATE TABLE IF NOT EXISTS counters (kind TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB);
"""

_enc = msgspec.json.Encoder()


class SpoolRejected(Exception):
    """The orchestrator refused an entry for good (the status and its message)."""

    def __init__(self, entry: Entry) -> None:
        super().__init__(f"{entry.kind} #{entry.id} rejected: {entry.error}")
        self.entry = entry


@dataclass
class Entry:
    id: int
    kind: str
    seq: int | None
    stage: str | None
    items: int
    body: bytes | None
    state: str = "pending"
    reply: bytes | None = None
    error: str | None = None
    attempts: int = 0


def _split(items: list[Any], make: Any, max_bytes: int) -> list[tuple[list[Any], bytes]]:
    """Chunks of ``items`` whose encoded body (``make(chunk)``) fits in ``max_bytes``."""
    body = _enc.encode(make(items))
    if len(body) <= max_bytes or len(items) == 1:
        return [(items, body)]
    mid = len(items) // 2
    return _split(items[:mid], make, max_bytes) + _split(items[mid:], make, max_bytes)


class Spool:
    """The outbox of one run. Open with ``await Spool.open(path)``.

    Owns the run's SQLite file and its one connection: the ordered entries (log and
    sensor batches with their per-stream sequence numbers, stage results with their
    uploads) and each entry's delivery state (pending, acked, rejected), reconciling
    them with what the orchestrator says it stored (:meth:`sync_server`), and a small
    key-value store that outlives an agent restart (the inventory document). It
    does not send anything: :mod:`vetting_agent.delivery` reads and settles entries.
    """

    def __init__(self, path: Path, conn: sqlite3.Connection, max_batch_bytes: int) -> None:
        self.path = path
        self._conn = conn
        self._limiter = anyio.CapacityLimiter(1)
        self.max_batch_bytes = max_batch_bytes
        self._changed = anyio.Event()
        self._done_events: dict[int, anyio.Event] = {}
        self.pending = 0  # entries not yet acknowledged (reported in heartbeats)

    # -- lifecycle ------------------------------------------------------------------
    @classmethod
    async def open(cls, path: str | Path, *, max_batch_bytes: int = 1 << 20) -> Spool:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)

        def _open() -> sqlite3.Connection:
            conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.executescript(_SCHEMA)
            return conn

        conn = await anyio.to_thread.run_sync(_open)
        spool = cls(path, conn, max_batch_bytes)
        spool.pending = await spool._call(
            lambda c: c.execute("SELECT count(*) FROM outbox WHERE state='pending'").fetchone()[0]
        )
        return spool

    async def aclose(self) -> None:
        await self._call(lambda c: c.close())

    async def _call(self, fn: Any) -> Any:
        return await anyio.to_thread.run_sync(fn, self._conn, limiter=self._limiter)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_changed(self, timeout: float | None = None) -> None:
        """Sleep until something is appended or settled (or ``timeout`` passes)."""
        event = self._changed
        with anyio.move_on_after(timeout):
            await event.wait()

    # -- sequence numbers -----------------------------------------------------------
    @staticmethod
    def _last_seq(conn: sqlite3.Connection, kind: str) -> int:
        row = conn.execute("SELECT seq FROM counters WHERE kind=?", (kind,)).fetchone()
        return row[0] if row else 0

    async def last_seq(self, kind: str) -> int:
        return await self._call(lambda c: self._last_seq(c, kind))

    async def sync_server(self, log_seq: int, sensor_seq: int, log_max: int = 0, sensor_max: int = 0) -> int:
        """Reconcile with what the orchestrator says it stored (its claim reply).

        Batches up to ``log_seq``/``sensor_seq`` (every batch from 1 to there is stored)
        are acknowledged (their ack was lost, or another agent instance sent them);
        pending ones above stay to be sent (a gap). New batches are numbered after the
        largest of the spool's counter and the highest the server stored (``*_max``), so
        they never reuse a stored number. Returns how many entries it settled.
        """

        def _sync(conn: sqlite3.Connection) -> int:
            settled = 0
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                for kind, seq, top in ((KIND_LOG, log_seq, log_max), (KIND_SENSOR, sensor_seq, sensor_max)):
                    cur = conn.execute(
                        "UPDATE outbox SET state='acked', body=NULL, done=? "
                        "WHERE kind=? AND state='pending' AND seq<=?",
                        (time.time(), kind, seq),
                    )
                    settled += cur.rowcount
                    conn.execute(
                        "INSERT INTO counters(kind, seq) VALUES(?, ?) "
                        "ON CONFLICT(kind) DO UPDATE SET seq=max(seq, excluded.seq)",
                        (kind, max(seq, top)),
                    )
            return settled

        settled = await self._call(_sync)
        self.pending -= settled
        if settled:
            self._notify()
        return settled

    # -- writing --------------------------------------------------------------------
    async def append_logs(self, lines: Sequence[LogLine]) -> list[int]:
        return await self._append_batches(
            KIND_LOG, list(lines), lambda seq, chunk: LogBatch(seq=seq, lines=chunk)
        )

    async def append_samples(self, samples: Sequence[Measurement]) -> list[int]:
        return await self._append_batches(
            KIND_SENSOR, list(samples), lambda seq, chunk: SensorBatch(seq=seq, samples=chunk)
        )

    async def _append_batches(self, kind: str, items: list[Any], make: Any) -> list[int]:
        if not items:
            return []
        # seq 2**31 encodes as wide as any real one: the size check holds once numbered
        chunks = _split(items, lambda chunk: make(2**31, chunk), self.max_batch_bytes - 256)

        def _write(conn: sqlite3.Connection) -> list[int]:
            ids: list[int] = []
            now = time.time()
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                seq = self._last_seq(conn, kind)
                for chunk, _ in chunks:
                    seq += 1
                    stage = getattr(chunk[0], "stage", None)
                    cur = conn.execute(
                        "INSERT INTO outbox(kind, seq, stage, items, body, created) VALUES(?,?,?,?,?,?)",
                        (kind, seq, stage, len(chunk), _enc.encode(make(seq, chunk)), now),
                    )
                    ids.append(cur.lastrowid)
                conn.execute(
                    "INSERT INTO counters(kind, seq) VALUES(?, ?) "
                    "ON CONFLICT(kind) DO UPDATE SET seq=excluded.seq",
                    (kind, seq),
                )
            return ids

        ids = await self._call(_write)
        self.pending += len(ids)
        self._notify()
        return ids

    async def append_result(self, result: StageResult, uploads: Sequence[ArtifactUpload] = ()) -> int:
        """Queue a stage result behind every batch written so far; its ``log_seq`` and
        ``sensor_seq`` are set to the last batch numbers. ``uploads`` (the result's
        artifact files) are queued just before it, in the same transaction."""

        def _write(conn: sqlite3.Connection) -> int:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(
                    "INSERT INTO outbox(kind, seq, stage, items, body, created) VALUES(?,?,?,?,?,?)",
                    [(KIND_ARTIFACT, None, result.stage, 1, _enc.encode(up), time.time()) for up in uploads],
                )
                final = msgspec.structs.replace(
                    result,
                    log_seq=self._last_seq(conn, KIND_LOG),
                    sensor_seq=self._last_seq(conn, KIND_SENSOR),
                )
                cur = conn.execute(
                    "INSERT INTO outbox(kind, seq, stage, items, body, created) VALUES(?,?,?,?,?,?)",
                    (KIND_RESULT, None, result.stage, 1, _enc.encode(final), time.time()),
                )
                return cur.lastrowid

        entry_id = await self._call(_write)
        self.pending += 1 + len(uploads)
        self._notify()
        return entry_id

    # -- delivery -------------------------------------------------------------------
    _COLUMNS = "id, kind, seq, stage, items, body, state, reply, error, attempts"

    async def next_pending(self) -> Entry | None:
        row = await self._call(
            lambda c: c.execute(
                f"SELECT {self._COLUMNS} FROM outbox WHERE state='pending' ORDER BY id LIMIT 1"
            ).fetchone()
        )
        return Entry(*row) if row else None

    async def get(self, entry_id: int) -> Entry | None:
        row = await self._call(
            lambda c: c.execute(f"SELECT {self._COLUMNS} FROM outbox WHERE id=?", (entry_id,)).fetchone()
        )
        return Entry(*row) if row else None

    async def note_attempt(self, entry_id: int) -> None:
        await self._call(lambda c: c.execute("UPDATE outbox SET attempts=attempts+1 WHERE id=?", (entry_id,)))

    async def settle(self, entry_id: int, *, state: str, reply: bytes | None = None, error: str | None = None) -> None:
        """Mark an entry ``acked`` (with the reply body) or ``rejected`` (with why)."""
        assert state in ("acked", "rejected")

        def _settle(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "UPDATE outbox SET state=?, reply=?, error=?, done=?, body=CASE WHEN ?='acked' THEN NULL ELSE body END "
                "WHERE id=? AND state='pending'",
                (state, reply, error, time.time(), state, entry_id),
            )
            return cur.rowcount

        if await self._call(_settle):
            self.pending -= 1
        event = self._done_events.pop(entry_id, None)
        if event is not None:
            event.set()
        self._notify()

    async def wait_settled(self, entry_id: int) -> Entry:
        """Wait until the entry is acknowledged (returns it, with ``reply``) or rejected
        (raises :class:`SpoolRejected`)."""
        while True:
            event = self._done_events.setdefault(entry_id, anyio.Event())
            entry = await self.get(entry_id)
            if entry is None:
                raise KeyError(f"no spool entry {entry_id}")
            if entry.state == "acked":
                self._done_events.pop(entry_id, None)
                return entry
            if entry.state == "rejected":
                self._done_events.pop(entry_id, None)
                raise SpoolRejected(entry)
            await event.wait()

    async def wait_drained(self) -> None:
        """Wait until nothing is pending."""
        while self.pending > 0:
            await self.wait_changed(1.0)

    # -- bookkeeping ----------------------------------------------------------------
    async def results(self) -> list[Entry]:
        rows = await self._call(
            lambda c: c.execute(
                f"SELECT {self._COLUMNS} FROM outbox WHERE kind='result' ORDER BY id"
            ).fetchall()
        )
        return [Entry(*r) for r in rows]

    async def produced(self) -> dict[str, int]:
        """Items written per kind (log lines, sensor samples, artifacts, results), all states."""
        rows = await self._call(
            lambda c: c.execute("SELECT kind, sum(items) FROM outbox GROUP BY kind").fetchall()
        )
        out = {KIND_LOG: 0, KIND_SENSOR: 0, KIND_ARTIFACT: 0, KIND_RESULT: 0}
        out.update({k: int(n) for k, n in rows})
        return out

    async def states(self) -> dict[str, int]:
        rows = await self._call(
            lambda c: c.execute("SELECT state, count(*) FROM outbox GROUP BY state").fetchall()
        )
        return {k: int(n) for k, n in rows}

    async def get_value(self, key: str) -> Any:
        row = await self._call(lambda c: c.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone())
        return msgspec.json.decode(row[0]) if row else None

    async def set_value(self, key: str, value: Any) -> None:
        body = _enc.encode(value)
        await self._call(
            lambda c: c.execute(
                "INSERT INTO kv(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (key, body),
            )
        )
