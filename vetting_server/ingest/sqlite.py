"""The SQLite side of ingest: one group commit, and the writer process that runs it.

Why a process: binding a group's parameters (eight per sample) needs the GIL, and in
the server's process it competed with HTTP, decoding and judging. Measured with
``bench/ingest.py`` (2,000 agents, 60 streaming): the in-process writer thread was busy
95 % of the time at ~100k rows/s, and the server reached 171k samples/s once it stopped
inserting measurements. The writer process has its own interpreter and a core of its
own: the server sends each group as one msgpack message over a pipe and answers the
batches' requests only after the process has replied that it committed.

Protocol (``python -m vetting_server.ingest.sqlite DB_PATH BUSY_TIMEOUT_MS``): both
directions carry frames of a 4-byte big-endian length and a msgpack body. A request is
``[now_iso, [[run_id, stream, seq, breaches, rows, evals, tallies, digest], ...]]``; the
reply is ``["ok", [status, ...], rows_stored]`` (new, duplicate or conflict) or ``["error", message]`` (the group was
rolled back), one per request, in order (the server may send a request before the
reply to the last one). EOF on stdin ends the process.

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
from collections import deque
from pathlib import Path
from typing import Any, BinaryIO

import msgspec

from ..db.database import _connect, _sqlite_sql
from .sql import INS_BATCH, INS_EVAL, INS_LOG, INS_MEAS, INS_MEAS_NUMERIC, NEW, SEL_DIGEST, TALLY, batch_status

_LEN = struct.Struct(">I")
MAX_SQLITE_PARAMS = 32000  # SQLite ≥ 3.32 allows 32766 bound parameters per statement
_VALUES_CACHE: dict[tuple[str, int], str] = {}


_INS_BATCH = _sqlite_sql(INS_BATCH)
_SEL_DIGEST = _sqlite_sql(SEL_DIGEST)
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


def write_group(conn: sqlite3.Connection, items: list[Any], now: str) -> tuple[list[int], int]:
    """Write a group inside the caller's transaction. ``items`` are
    ``(run_id, stream, seq, breaches, rows, evals, tallies, digest)``; a batch whose
    (run, stream, seq) is already in ``batches`` is skipped: a retry when its digest is
    the stored one, else a conflict. Returns each batch's status (``sql.NEW``,
    ``DUPLICATE``, ``CONFLICT``) and the number of rows stored."""
    meas: list[Any] = []
    evals: list[Any] = []
    tallies: list[Any] = []
    lines: list[Any] = []
    statuses: list[int] = []
    for run_id, stream, seq, breaches, rows, ev, tl, digest in items:
        cur = conn.execute(_INS_BATCH, (run_id, stream, seq, len(rows), breaches, now, digest))
        if cur.rowcount != 1:
            stored = conn.execute(_SEL_DIGEST, (run_id, stream, seq)).fetchone()[0]
            statuses.append(batch_status(stored, digest))
            continue
        statuses.append(NEW)
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
    return statuses, len(meas) + len(lines)


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
                statuses, stored = write_group(conn, items, now)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except Exception as exc:
            _write_frame(tx, encode(["error", f"{type(exc).__name__}: {exc}"]))
        else:
            _write_frame(tx, encode(["ok", statuses, stored]))
    conn.close()


# ------------------------------------------------------------------- the server side


class WriterGone(RuntimeError):
    """The writer process died or could not be started."""


class _Channel:
    """One writer process, and the reply slots of the groups sent to it that it has not
    answered yet, oldest first (it answers in order)."""

    __slots__ = ("proc", "pending", "gone")

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.pending: deque[list[Any]] = deque()
        self.gone: str | None = None  # why it can answer no more (set by the reader)


class WriterProcess:
    """The server's handle on the writer process. :meth:`write` blocks (call it from a
    worker thread). Two threads may call it at once: a group is sent while the process
    still commits the one before it, so the process starts on the next group as soon as
    it has committed one, instead of waiting while the server encodes it and answers the
    first group's requests (``bench/ingest.py``, 2,000 agents, interleaved with one group
    in flight: 189k/179k → 212k/192k samples/s). The process answers in order: one
    caller at a time reads replies, each into the slot of the caller it belongs to,
    until its own has come. A process that died is started again on the next call, so
    a crash costs the groups in flight (their requests get an error and the agents
    retry; a batch that did commit is then recognised as a duplicate)."""

    def __init__(self, db_path: str, busy_timeout_ms: int) -> None:
        self.db_path, self.busy_timeout_ms = db_path, busy_timeout_ms
        self._chan: _Channel | None = None
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder().decode
        self._send_lock = threading.Lock()  # one frame at a time into the pipe; guards _chan
        self._recv_lock = threading.Lock()  # one reader of the replies at a time

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return None if self._chan is None else self._chan.proc

    def _channel(self) -> _Channel:
        """The live process (under the send lock), started again if it died. A dead one
        is retired only when no caller can still be reading its pipe: its reader said
        it is gone, or nothing was pending on it."""
        ch = self._chan
        if ch is not None and (ch.gone is not None or (not ch.pending and ch.proc.poll() is not None)):
            self._chan = None
            _stop(ch.proc)
            ch = None
        if ch is None:
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "vetting_server.ingest.sqlite", self.db_path, str(self.busy_timeout_ms)],
                    # buffered pipes: a frame is written and read whole (a raw pipe read
                    # may return part of it)
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                )
            except OSError as exc:
                raise WriterGone(f"cannot start the ingest writer process: {exc}") from None
            ch = self._chan = _Channel(proc)
        return ch

    def write(self, items: list[Any], now: str) -> tuple[list[int], int]:
        body = self._encode([now, items])  # outside the locks: meanwhile the process commits the group before
        slot: list[Any] = [None]
        with self._send_lock:
            ch = self._channel()
            ch.pending.append(slot)
            try:
                _write_frame(ch.proc.stdin, body)  # type: ignore[arg-type]
            except OSError:
                pass  # the process is gone: reading its reply below finds out and says why
        with self._recv_lock:
            while slot[0] is None and ch.gone is None:
                try:
                    frame, why = _read_frame(ch.proc.stdout), "it exited"  # type: ignore[arg-type]
                except (OSError, ValueError) as exc:
                    frame, why = None, str(exc)
                if frame is None:
                    ch.gone = f"{why}; exit status {ch.proc.poll()}"
                else:
                    ch.pending.popleft()[0] = frame
        if slot[0] is None:
            raise WriterGone(f"the ingest writer process failed mid-group ({ch.gone})")
        reply = self._decode(slot[0])
        if reply[0] != "ok":
            raise sqlite3.DatabaseError(f"ingest writer: {reply[1]}")
        return [int(d) for d in reply[1]], int(reply[2])

    def close(self) -> None:
        with self._send_lock:
            ch, self._chan = self._chan, None
        if ch is not None:
            _stop(ch.proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """End a writer process: EOF on its stdin, then wait (kill after 10 s)."""
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
