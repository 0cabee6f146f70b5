"""The SQLite side of ingest: one group commit, and the writer process that runs it.

Why a process: binding a group's parameters (eight per sample) needs the GIL, and in
the server's process it competed with HTTP, decoding and judging. Measured with
``bench/ingest.py`` (2,000 agents, 60 streaming): the in-process writer thread was busy
95 % of the time at ~100k rows/s, and the server reached 171k samples/s once it stopped
inserting measurements. The writer process has its own interpreter and a core of its
own: the server sends each group as one msgpack message over a pipe and answers the
batches' requests only after the process has replied that it committed.

Protocol (``python -m vetting_server.ingest_sqlite DB_PATH BUSY_TIMEOUT_MS``): both
directions carry frames of a 4-byte big-endian length and a msgpack body. A request is
``[now_iso, [[run_id, stream, seq, breaches, rows, evals, tallies], ...]]``; the reply
is ``["ok", [duplicate, ...], rows_stored]`` or ``["error", message]`` (the group was
rolled back). EOF on stdin ends the process.

The process opens its own connection with the server's PRAGMAs (WAL, foreign keys,
``synchronous = NORMAL``, busy timeout): SQLite serialises it with the server's own
writer connection (``BEGIN IMMEDIATE`` on both).
"""

from __future__ import annotations

import gc
import sqlite3
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, BinaryIO

import msgspec

from .database import _connect, _sqlite_sql
from .ingest_sql import INS_BATCH, INS_EVAL, INS_LOG, INS_MEAS, INS_MEAS_NUMERIC, TALLY

_LEN = struct.Struct(">I")
MAX_SQLITE_PARAMS = 32000  # SQLite ≥ 3.32 allows 32766 bound parameters per statement
_VALUES_CACHE: dict[tuple[str, int], str] = {}


_INS_BATCH = _sqlite_sql(INS_BATCH)
_TALLY = _sqlite_sql(TALLY["sqlite"])


def insert_values(conn: sqlite3.Connection, insert_sql: str, rows: list[Any]) -> None:
    """Insert ``rows`` with multi-row ``VALUES`` statements (up to ~32k parameters each).

    Why not ``executemany``: it binds and steps row by row, releasing and re-taking the
    GIL around every row's step. One statement per thousands of rows is faster even on
    an idle machine (measured ≈ 530k vs 360k rows/s).
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


def write_group(conn: sqlite3.Connection, items: list[Any], now: str) -> tuple[list[bool], int]:
    """Write a group inside the caller's transaction. ``items`` are
    ``(run_id, stream, seq, breaches, rows, evals, tallies)``; a batch whose
    (run, stream, seq) is already in ``batches`` is a retry and is skipped. Returns
    the duplicate flags and the number of rows stored."""
    meas: list[Any] = []
    evals: list[Any] = []
    tallies: list[Any] = []
    lines: list[Any] = []
    dups: list[bool] = []
    for run_id, stream, seq, breaches, rows, ev, tl in items:
        cur = conn.execute(_INS_BATCH, (run_id, stream, seq, len(rows), breaches, now))
        dup = cur.rowcount != 1
        dups.append(dup)
        if dup:
            continue
        if stream == "sensor":
            meas.extend(rows)
            evals.extend(ev)
            tallies.extend(tl)
        else:
            lines.extend(rows)
    if meas:
        numeric = [r[:7] for r in meas if r[7] is None]  # without their (NULL) text
        if numeric:
            insert_values(conn, INS_MEAS_NUMERIC, numeric)
        if len(numeric) < len(meas):
            insert_values(conn, INS_MEAS, [r for r in meas if r[7] is not None])
    if evals:
        insert_values(conn, INS_EVAL, evals)
    if tallies:
        conn.executemany(_TALLY, tallies)
    if lines:
        insert_values(conn, INS_LOG, lines)
    return dups, len(meas) + len(lines)


# ------------------------------------------------------------------ the process side


def _read_frame(f: BinaryIO) -> bytes | None:
    head = f.read(4)
    if len(head) < 4:
        return None
    (n,) = _LEN.unpack(head)
    body = f.read(n)
    if len(body) < n:
        return None
    return body


def _write_frame(f: BinaryIO, body: bytes) -> None:
    f.write(_LEN.pack(len(body)) + body)
    f.flush()


def serve(db_path: str, busy_timeout_ms: int, rx: BinaryIO, tx: BinaryIO) -> None:
    # No garbage collector: this loop makes no reference cycles (decode, insert, drop),
    # and a group decodes into tens of thousands of lists, each allocation counting
    # towards a collection that walks them all. Measured: decoding 1,000,000 rows,
    # 1.9M rows/s with the collector, 3.2M without.
    gc.disable()
    conn = _connect(Path(db_path), busy_timeout_ms)  # the server's own PRAGMAs
    # checkpoint every ~40 MB of WAL instead of every 4 MB: fewer fsyncs on the ingest path
    conn.execute("PRAGMA wal_autocheckpoint = 10000")
    decode = msgspec.msgpack.Decoder().decode
    encode = msgspec.msgpack.Encoder().encode
    while (frame := _read_frame(rx)) is not None:
        now, items = decode(frame)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                dups, stored = write_group(conn, items, now)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except Exception as exc:
            _write_frame(tx, encode(["error", f"{type(exc).__name__}: {exc}"]))
        else:
            _write_frame(tx, encode(["ok", dups, stored]))
    conn.close()


# ------------------------------------------------------------------- the server side


class WriterGone(RuntimeError):
    """The writer process died or could not be started."""


class WriterProcess:
    """The server's handle on the writer process. :meth:`write` blocks (call it from a
    worker thread, one at a time); a process that died is started again on the next
    call, so a crash costs the group in flight (its requests get an error and the
    agents retry; a batch that did commit is then recognised as a duplicate)."""

    def __init__(self, db_path: str, busy_timeout_ms: int) -> None:
        self.db_path, self.busy_timeout_ms = db_path, busy_timeout_ms
        self.proc: subprocess.Popen[bytes] | None = None
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder().decode
        self._lock = threading.Lock()

    def _ensure(self) -> subprocess.Popen[bytes]:
        if self.proc is None or self.proc.poll() is not None:
            try:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "vetting_server.ingest_sqlite", self.db_path, str(self.busy_timeout_ms)],
                    # buffered pipes: a frame is written and read whole (a raw pipe read
                    # may return part of it)
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                )
            except OSError as exc:
                raise WriterGone(f"cannot start the ingest writer process: {exc}") from None
        return self.proc

    def write(self, items: list[Any], now: str) -> tuple[list[bool], int]:
        with self._lock:
            proc = self._ensure()
            assert proc.stdin is not None and proc.stdout is not None
            try:
                _write_frame(proc.stdin, self._encode([now, items]))  # type: ignore[arg-type]
                frame = _read_frame(proc.stdout)  # type: ignore[arg-type]
            except (BrokenPipeError, OSError) as exc:
                frame, why = None, str(exc)
            else:
                why = "it exited"
            if frame is None:
                rc = proc.poll()
                self.close()
                raise WriterGone(f"the ingest writer process failed mid-group ({why}; exit status {rc})")
            reply = self._decode(frame)
            if reply[0] != "ok":
                raise sqlite3.DatabaseError(f"ingest writer: {reply[1]}")
            return [bool(d) for d in reply[1]], int(reply[2])

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        finally:
            if proc.stdout is not None:
                proc.stdout.close()


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]), sys.stdin.buffer, sys.stdout.buffer)
