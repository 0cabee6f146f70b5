"""memtester: a userspace RAM test, wrapped as a Vetting stage.

The tool-wrapper pattern: :func:`memtester_argv` builds the command line,
:func:`parse_memtester` is a *pure* function of the captured output (tested on real
output under ``tests/fixtures/memtester/<version>/``), and :func:`run_memtester` is the
stage that ties them to a :class:`~vetting_core.StageContext`.

Why the verdict is parsed and not taken from the exit code: memtester exits 0 after
testing only 64 KiB of a 4 MiB request when ``mlock`` is limited (it shrinks the
buffer page by page until mlock succeeds), and it exits 137 with half a loop done when
it is killed. The parser reports what was *tested* (``coverage_pct``), which tests ran
and which did not say ``ok``, and every ``FAILURE`` line.

Why the size is planned: memtester ``mlock``s its buffer, and locking more than the
machine can spare wakes the OOM killer, which may pick the agent instead. The stage
sizes the test from ``MemAvailable`` minus a reserve, caps it at a fraction, and runs
memtester under ``choom -n 1000`` (when present) so that memtester, not the agent, is
the OOM killer's first choice.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from vetting_core import StageContext, StageFailed, ToolNotFound
from vetting_core.tools import stream_tool

TOOL = "memtester"

# The tests of memtester 4.x, in the order it runs them (tests.c).
KNOWN_TESTS: tuple[str, ...] = (
    "Stuck Address",
    "Random Value",
    "Compare XOR",
    "Compare SUB",
    "Compare MUL",
    "Compare DIV",
    "Compare OR",
    "Compare AND",
    "Sequential Increment",
    "Solid Bits",
    "Block Sequential",
    "Checkerboard",
    "Bit Spread",
    "Bit Flip",
    "Walking Ones",
    "Walking Zeroes",
    "8-bit Writes",
    "16-bit Writes",
)

# memtester's exit status is a bit mask (memtester.h)
EXIT_FAIL_NONSTARTER = 0x01
EXIT_FAIL_ADDRESSLINES = 0x02
EXIT_FAIL_OTHERTEST = 0x04

MAX_KEPT_FAILURES = 100  # a dying DIMM prints millions of FAILURE lines


# -- argv ----------------------------------------------------------------------------
def memtester_argv(mib: int, loops: int = 1, *, oom_guard: bool = True) -> list[str]:
    """The command for one memtester process testing ``mib`` MiB ``loops`` times.

    With ``oom_guard`` (and util-linux ``choom`` installed) memtester runs with
    ``oom_score_adj=1000``: if memory runs out anyway, the kernel kills memtester first.
    """
    if mib < 1:
        raise ValueError(f"memtester needs at least 1 MiB, got {mib}")
    if loops < 1:
        raise ValueError(f"loops must be at least 1, got {loops} (0 would run forever)")
    argv = [TOOL, f"{int(mib)}M", str(int(loops))]
    if oom_guard and shutil.which("choom"):
        argv = ["choom", "-n", "1000", "--", *argv]
    return argv


# -- sizing --------------------------------------------------------------------------
class SizingError(ValueError):
    pass


def parse_meminfo(text: str) -> dict[str, int]:
    """``/proc/meminfo`` as ``{field: kB}``."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[name.strip()] = int(parts[0])
    return out


@dataclass(frozen=True)
class SizePlan:
    per_worker_mib: int
    workers: int
    available_mib: int
    requested_mib: int | None  # None: "auto"
    capped: bool

    @property
    def total_mib(self) -> int:
        return self.per_worker_mib * self.workers


def plan_size(
    meminfo: dict[str, int],
    *,
    requested_mib: int | None,
    workers: int = 1,
    max_fraction: float = 0.9,
    reserve_mib: int = 512,
    min_mib: int = 4,
) -> SizePlan:
    """How much memory memtester may lock without inviting the OOM killer.

    The budget is ``(MemAvailable - reserve_mib) * max_fraction``; ``requested_mib=None``
    ("auto") takes the whole budget, a number is capped to it. The total is split
    evenly over ``workers`` processes. Raises :class:`SizingError` when a worker would
    get less than ``min_mib``.
    """
    if "MemAvailable" not in meminfo:
        raise SizingError("/proc/meminfo has no MemAvailable line (kernel older than 3.14?)")
    if not 0 < max_fraction <= 1:
        raise SizingError(f"max_fraction must be in (0, 1], got {max_fraction}")
    if workers < 1:
        raise SizingError(f"workers must be at least 1, got {workers}")
    available = meminfo["MemAvailable"] // 1024
    budget = int(max(0, available - reserve_mib) * max_fraction)
    total = budget if requested_mib is None else min(requested_mib, budget)
    per_worker = total // workers
    if per_worker < min_mib:
        raise SizingError(
            f"only {available} MiB available (reserve {reserve_mib} MiB, max {max_fraction:.0%}): "
            f"{per_worker} MiB per worker is below the minimum of {min_mib} MiB"
        )
    return SizePlan(
        per_worker_mib=per_worker,
        workers=workers,
        available_mib=available,
        requested_mib=requested_mib,
        capped=requested_mib is not None and requested_mib > budget,
    )


# -- parsing -------------------------------------------------------------------------
def apply_backspaces(line: str) -> str:
    """memtester animates progress with backspaces; keep what a terminal would show."""
    if "\b" not in line:
        return line
    buf: list[str] = []
    for ch in line:
        if ch == "\b":
            if buf:
                buf.pop()
        else:
            buf.append(ch)
    return "".join(buf)


def clean_output(text: str) -> str:
    return "\n".join(apply_backspaces(line) for line in text.replace("\r", "").split("\n"))


@dataclass(frozen=True)
class TestOutcome:
    loop: int
    name: str
    ok: bool
    detail: str = ""


@dataclass
class MemtesterReport:
    """What one memtester process did, read from its output."""

    returncode: int | None
    version: str | None = None
    wanted_bytes: int | None = None
    got_bytes: int | None = None
    locked: bool | None = None
    loops_planned: int | None = None  # None: "loops" was 0 (forever) or never printed
    loops_started: int = 0
    tests: list[TestOutcome] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # first MAX_KEPT_FAILURES lines
    failure_count: int = 0
    errors: list[str] = field(default_factory=list)  # why it did not start
    completed: bool = False  # printed "Done."
    interrupted: TestOutcome | None = None  # the test running when it was killed
    timed_out: bool = False

    @property
    def failed_tests(self) -> list[TestOutcome]:
        return [t for t in self.tests if not t.ok]

    @property
    def passed_tests(self) -> list[TestOutcome]:
        return [t for t in self.tests if t.ok]

    @property
    def coverage_pct(self) -> float | None:
        """Tested bytes as a percentage of the bytes asked for."""
        if not self.wanted_bytes or self.got_bytes is None:
            return None
        return 100.0 * self.got_bytes / self.wanted_bytes

    @property
    def error_count(self) -> int:
        return self.failure_count + len(self.failed_tests)

    def verdict(self) -> tuple[bool, str | None]:
        """``(passed, reason)``. Coverage is judged by the thresholds, not here."""
        if self.wanted_bytes is None:
            why = self.errors[0] if self.errors else "no output"
            return False, f"memtester did not start: {why}"
        if self.failure_count:
            first = self.failures[0] if self.failures else ""
            return False, f"{self.failure_count} memory error(s) reported; first: {first}"
        if self.failed_tests:
            names = ", ".join(f"{t.name} (loop {t.loop})" for t in self.failed_tests[:5])
            return False, f"{len(self.failed_tests)} test(s) did not pass: {names}"
        if not self.completed:
            where = f"{self.tests[-1].name} of loop {self.tests[-1].loop}" if self.tests else "none"
            how = "timed out and was killed" if self.timed_out else "stopped before 'Done.'"
            during = f", killed during {self.interrupted.name}" if self.interrupted else ""
            code = f", exit {self.returncode}" if self.returncode not in (0, None) else ""
            return False, f"memtester {how} (last finished test: {where}{during}{code})"
        if self.loops_planned is not None and self.loops_started < self.loops_planned:
            return False, f"only {self.loops_started} of {self.loops_planned} loops ran"
        if not self.tests:
            return False, "memtester printed no test results"
        if self.returncode not in (0, None):
            return False, f"memtester exited {self.returncode} ({describe_exit(self.returncode)}) without a FAILURE line"
        return True, None


def describe_exit(code: int) -> str:
    if code > 128:
        return f"killed by signal {code - 128}"
    if code < 0:
        return f"killed by signal {-code}"
    parts = []
    if code & EXIT_FAIL_NONSTARTER:
        parts.append("did not start")
    if code & EXIT_FAIL_ADDRESSLINES:
        parts.append("address line test failed")
    if code & EXIT_FAIL_OTHERTEST:
        parts.append("a data test failed")
    return ", ".join(parts) or "unknown failure"


_VERSION = re.compile(r"^memtester version (\S+)", re.M)
_WANT = re.compile(r"^want\s+\d+MB \((\d+) bytes\)", re.M)
_GOT = re.compile(r"^got\s+\d+MB \((\d+) bytes\)(.*)$", re.M)
_LOOP = re.compile(r"^Loop (\d+)(?:/(\d+))?:\s*$", re.M)
_TEST = re.compile(
    r"  (?P<name>" + "|".join(re.escape(n) for n in KNOWN_TESTS) + r")\s*: "
    r"|^  (?P<other>[A-Za-z0-9][A-Za-z0-9 -]*?)\s*: ",
    re.M,
)


def parse_memtester(
    stdout: str, stderr: str = "", returncode: int | None = 0, *, timed_out: bool = False
) -> MemtesterReport:
    """Read memtester's output (any version 4.x). Pure: no I/O."""
    out = clean_output(stdout)
    err = clean_output(stderr)
    rep = MemtesterReport(returncode=returncode, timed_out=timed_out)
    if m := _VERSION.search(out):
        rep.version = m.group(1)
    if m := _WANT.search(out):
        rep.wanted_bytes = int(m.group(1))
    for m in _GOT.finditer(out):
        rep.got_bytes = int(m.group(1))
        if m.group(2).rstrip().endswith("locked."):
            rep.locked = True
    if rep.locked is None and ("unlocked" in out or "unlocked" in err):
        rep.locked = False

    for text in (err, out):
        for line in text.splitlines():
            if line.startswith("FAILURE"):
                rep.failure_count += 1
                if len(rep.failures) < MAX_KEPT_FAILURES:
                    rep.failures.append(line.strip())
    if rep.wanted_bytes is None:
        rep.errors = [line.strip() for line in err.splitlines() if line.strip()]

    loops = list(_LOOP.finditer(out))
    rep.loops_started = len(loops)
    if loops and loops[0].group(2):
        rep.loops_planned = int(loops[0].group(2))
    for i, lm in enumerate(loops):
        end = loops[i + 1].start() if i + 1 < len(loops) else len(out)
        segment = out[lm.end() : end]
        done = segment.find("\nDone.")
        if done >= 0:
            segment = segment[:done]
        marks = list(_TEST.finditer(segment))
        for j, tm in enumerate(marks):
            name = tm.group("name") or tm.group("other")
            stop = marks[j + 1].start() if j + 1 < len(marks) else len(segment)
            detail = segment[tm.end() : stop].strip()
            rep.tests.append(TestOutcome(loop=int(lm.group(1)), name=name, ok=detail.endswith("ok"), detail=detail[-120:]))
    rep.completed = re.search(r"^Done\.\s*$", out, re.M) is not None
    if not rep.completed and rep.tests and not rep.tests[-1].ok and not rep.failure_count:
        # killed in the middle of a test: that test was interrupted, not failed
        rep.interrupted = rep.tests.pop()
    return rep


# -- the stage -------------------------------------------------------------------------
DEFAULT_PARAMS: dict[str, Any] = {
    "mib": 256,  # per run, split over workers; "auto" = everything the budget allows
    "loops": 1,
    "workers": 1,  # memtester is single-threaded; "auto" = one per 2 CPUs, at most 8
    "max_fraction": 0.9,
    "reserve_mib": 512,
    "min_mib": 4,
    "oom_guard": True,
    "tool_timeout_s": 3000.0,
}

MEMINFO = Path("/proc/meminfo")


def _param_int(params: dict[str, Any], name: str, *, auto: bool = False) -> int | None:
    value = params.get(name, DEFAULT_PARAMS[name])
    if auto and value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        allowed = 'a whole number or "auto"' if auto else "a whole number"
        raise StageFailed(f"parameter {name!r} must be {allowed}, got {value!r}")
    return int(value)


def _param_float(params: dict[str, Any], name: str) -> float:
    value = params.get(name, DEFAULT_PARAMS[name])
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise StageFailed(f"parameter {name!r} must be a number, got {value!r}")
    return float(value)


def _first(group: BaseExceptionGroup) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _workers(params: dict[str, Any]) -> int:
    value = _param_int(params, "workers", auto=True)
    if value is None:
        return max(1, min(8, (os.cpu_count() or 2) // 2))
    return value


async def run_memtester(ctx: StageContext) -> None:
    """The ``Memtester`` stage: plan the size, run N memtesters, judge their output."""
    params = ctx.params
    requested = _param_int(params, "mib", auto=True)
    loops = _param_int(params, "loops")
    workers = _workers(params)
    timeout = _param_float(params, "tool_timeout_s")
    if loops is None or loops < 1:
        raise StageFailed(f"parameter 'loops' must be at least 1, got {loops}")
    try:
        meminfo = parse_meminfo(MEMINFO.read_text())
        plan = plan_size(
            meminfo,
            requested_mib=requested,
            workers=workers,
            max_fraction=_param_float(params, "max_fraction"),
            reserve_mib=_param_int(params, "reserve_mib") or 0,
            min_mib=_param_int(params, "min_mib") or 1,
        )
    except (OSError, SizingError) as exc:
        raise StageFailed(f"cannot size the memory test: {exc}") from None
    if plan.capped:
        ctx.log(
            f"asked for {requested} MiB but only {plan.total_mib} MiB can be locked safely "
            f"({plan.available_mib} MiB available); testing {plan.total_mib} MiB",
            level="warning",
        )
    ctx.summary["plan"] = {
        "workers": plan.workers,
        "per_worker_mib": plan.per_worker_mib,
        "total_mib": plan.total_mib,
        "available_mib": plan.available_mib,
        "capped": plan.capped,
        "loops": loops,
    }
    ctx.log(f"testing {plan.total_mib} MiB in {plan.workers} memtester process(es), {loops} loop(s)")

    tests_total = len(KNOWN_TESTS) * loops * plan.workers
    done = 0
    reports: list[MemtesterReport] = []
    started = time.monotonic()

    logged_failures = 0

    def on_line(stream: str, raw: str) -> None:
        nonlocal done, logged_failures
        line = apply_backspaces(raw).rstrip()
        if not line:
            return
        if stream == "stderr":
            if line.startswith("FAILURE"):
                logged_failures += 1
                if logged_failures == MAX_KEPT_FAILURES + 1:
                    ctx.log("more FAILURE lines follow; all of them are in the memtester-output artifact", level="error")
                if logged_failures > MAX_KEPT_FAILURES:
                    return
            ctx.log(line, level="error" if line.startswith("FAILURE") else "warning")
            return
        finished = len(_TEST.findall(line))
        if finished:
            done += finished
            ctx.progress(min(1.0, done / tests_total), line.strip())
        ctx.log(line, level="debug")

    async def worker(index: int) -> None:
        argv = memtester_argv(plan.per_worker_mib, loops, oom_guard=bool(params.get("oom_guard", True)))
        async with ctx.substep(f"memtester#{index}") as step:
            ctx.log(f"$ {' '.join(argv)}", level="debug")
            try:
                result = await stream_tool(argv, on_line, timeout=timeout)
            except ToolNotFound:
                raise StageFailed(
                    f"{argv[0]} is not installed on this machine (Debian: apt-get install memtester)"
                ) from None
            ctx.save_text("memtester-output", f"memtester-{index}.txt", result.stdout + "\n" + result.stderr)
            rep = parse_memtester(result.stdout, result.stderr, result.returncode, timed_out=result.timed_out)
            reports.append(rep)
            ok, reason = rep.verdict()
            step.summary.update(
                {
                    "requested_mib": plan.per_worker_mib,
                    "tested_bytes": rep.got_bytes,
                    "coverage_pct": rep.coverage_pct,
                    "locked": rep.locked,
                    "loops": rep.loops_started,
                    "tests_passed": len(rep.passed_tests),
                    "tests_failed": len(rep.failed_tests),
                    "failures": rep.failure_count,
                    "first_failures": rep.failures[:10],
                    "returncode": rep.returncode,
                    "version": rep.version,
                }
            )
            if not ok:
                step.fail(reason or "failed")

    try:
        async with anyio.create_task_group() as tg:
            for i in range(plan.workers):
                tg.start_soon(worker, i)
    except* StageFailed as group:
        # a task group wraps what its tasks raise; hand the verdict on unwrapped
        raise _first(group) from None

    tested_bytes = sum(r.got_bytes or 0 for r in reports)
    coverages = [r.coverage_pct for r in reports]
    ctx.measure("memtester", "errors", sum(r.error_count for r in reports))
    ctx.measure("memtester", "failed_tests", sum(len(r.failed_tests) for r in reports))
    ctx.measure(
        "memtester", "coverage_pct", min((c for c in coverages if c is not None), default=0.0), "%"
    )
    ctx.measure("memtester", "tested_mib", tested_bytes / 1048576, "MiB")
    ctx.measure(
        "memtester", "pct_of_available", 100.0 * tested_bytes / 1048576 / max(1, plan.available_mib), "%"
    )
    ctx.measure("memtester", "locked", 1.0 if all(r.locked for r in reports) else 0.0)
    ctx.measure("memtester", "duration_s", time.monotonic() - started, "s")
    ctx.summary["tested_mib"] = round(tested_bytes / 1048576, 1)
    ctx.summary["errors"] = sum(r.error_count for r in reports)
    ctx.progress(1.0, "memtester finished")
