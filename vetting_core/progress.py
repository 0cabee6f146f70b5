"""A running stage's progress, as people read it: percent, elapsed, ETA.

One source for every view: the stage reports fractions through its context (or the
context estimates them from the stage's expected duration, :mod:`.context`), and the
agent's local mode and ``vetting run watch`` both print them with :func:`progress_line`.
"""

from __future__ import annotations


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{s:02d}s"
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m"


def eta(elapsed: float, fraction: float | None) -> float | None:
    """Remaining seconds at the current pace (None before any progress is known)."""
    if fraction is None or fraction <= 0.0 or fraction > 1.0:
        return None
    return elapsed / fraction - elapsed


def progress_line(prefix: str, stage: str, fraction: float | None, elapsed: float, message: str = "") -> str:
    """``[2/9] CPUStress         45%  elapsed 20s  ETA 25s  stress-ng cpu for 45s``."""
    pct = "  ?%" if fraction is None else f"{fraction * 100:3.0f}%"
    text = f"{prefix} {stage:<16} {pct}  elapsed {fmt_duration(elapsed)}  ETA {fmt_duration(eta(elapsed, fraction))}"
    if message:
        text += f"  {message[:60]}"
    return text
