"""The stage sink of the connected modes: buffer in memory, flush to the spool.

A stage calls ``ctx.log``/``ctx.measure`` synchronously, possibly thousands of times a
second; writing each call to SQLite would cost a disk sync per sample. So lines and
samples collect in two lists and are written to the spool as batches every
``flush_interval_s`` (1 s) or as soon as ``max_items`` pile up, and always before a
stage's result is queued. What an agent crash can lose is bounded by that second of
buffer; what the network or the orchestrator can lose is nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio

from vetting_core.model import Measurement
from vetting_core.protocol import LogLine

from .spool import Spool

MAX_MESSAGE_CHARS = 16_000  # one log line; longer output belongs in an artifact


class Outbound:
    def __init__(
        self,
        spool: Spool,
        *,
        flush_interval_s: float = 1.0,
        max_items: int = 5000,
        on_progress: Callable[[str, float | None, str], None] | None = None,
    ) -> None:
        self.spool = spool
        self.flush_interval_s = flush_interval_s
        self.max_items = max_items
        self.on_progress = on_progress
        self._lines: list[LogLine] = []
        self._samples: list[Measurement] = []
        self._lock = anyio.Lock()
        self._kick = anyio.Event()
        self.lines_produced = 0
        self.samples_produced = 0

    # -- Sink protocol (synchronous, called from stages) ------------------------------
    def log(self, line: LogLine) -> None:
        if len(line.message) > MAX_MESSAGE_CHARS:
            cut = len(line.message) - MAX_MESSAGE_CHARS
            line = LogLine(
                ts=line.ts, stage=line.stage, level=line.level,
                message=line.message[:MAX_MESSAGE_CHARS] + f" … [{cut} characters cut]",
            )
        self._lines.append(line)
        self.lines_produced += 1
        if len(self._lines) >= self.max_items:
            self._kick.set()

    def measurement(self, sample: Measurement) -> None:
        self._samples.append(sample)
        self.samples_produced += 1
        if len(self._samples) >= self.max_items:
            self._kick.set()

    def progress(self, stage: str, fraction: float | None, message: str) -> None:
        if self.on_progress is not None:
            self.on_progress(stage, fraction, message)

    # -- flushing ---------------------------------------------------------------------
    @property
    def buffered(self) -> int:
        return len(self._lines) + len(self._samples)

    async def flush(self) -> None:
        """Write everything buffered so far to the spool (lines, then samples)."""
        async with self._lock:
            lines, self._lines = self._lines, []
            samples, self._samples = self._samples, []
            if lines:
                await self.spool.append_logs(lines)
            if samples:
                await self.spool.append_samples(samples)

    async def flush_loop(self) -> None:
        while True:
            with anyio.move_on_after(self.flush_interval_s):
                await self._kick.wait()
            self._kick = anyio.Event()
            await self.flush()
