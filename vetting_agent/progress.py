"""Live progress for local mode: stage, percent, ETA.

On a terminal one status line is redrawn in place; in a pipe or a log file a line is
printed when the stage changes and at most every ``every_s`` seconds otherwise, so a
CI log stays readable. The fractions come from the stage context (the stage's own, or
estimated from its expected duration); the line is :func:`vetting_core.progress.progress_line`,
the same as ``vetting run watch`` prints.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from vetting_core.progress import fmt_duration, progress_line


class ProgressPrinter:
    def __init__(self, total: int, stream: TextIO | None = None, *, every_s: float = 5.0) -> None:
        self.total = total
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every_s = every_s
        self.index = 0
        self.stage: str | None = None
        self.started = time.monotonic()
        self.fraction: float | None = None
        self.message = ""
        self._last_print = 0.0
        self._drawn = False

    def start_stage(self, index: int, stage: str) -> None:
        self.index, self.stage = index, stage
        self.started = time.monotonic()
        self.fraction, self.message = 0.0, ""
        self._print(force=True)

    def update(self, stage: str, fraction: float | None, message: str) -> None:
        if stage != self.stage:
            return
        if fraction is not None:
            self.fraction = max(0.0, min(1.0, fraction))
        if message:
            self.message = message
        self._print()

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        return progress_line(f"[{self.index}/{self.total}]", self.stage or "", self.fraction, elapsed, self.message)

    def _print(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.tty:
            if not force and now - self._last_print < 0.2:
                return
            self.stream.write("\r\x1b[2K" + self.line())
            self._drawn = True
        else:
            if not force and now - self._last_print < self.every_s:
                return
            self.stream.write(self.line() + "\n")
        self._last_print = now
        self.stream.flush()

    def finish_stage(self, stage: str, verdict: str, reason: str | None, duration_s: float) -> None:
        if self.tty and self._drawn:
            self.stream.write("\r\x1b[2K")
            self._drawn = False
        text = f"[{self.index}/{self.total}] {stage:<16} {verdict.upper():<8} {fmt_duration(duration_s)}"
        if reason:
            text += f"  {reason}"
        self.stream.write(text + "\n")
        self.stream.flush()

    def tick(self) -> None:
        """Redraw (a stage that reports no progress still shows its elapsed time)."""
        if self.stage is not None:
            self._print()
