"""stress-ng: argv builder and pure parsers of its log and ``--yaml`` report.

Why parse instead of trusting the exit status: stress-ng 0.15 exits 0 when every
requested stressor was skipped ("No stress workers invoked (one or more were
unsupported)"), exits 3 when a stressor merely lacked a resource, and the summary
lines ("passed:/failed:/skipped:", 0.16+) or ``fail:`` lines are what say which
stressor actually failed. The verdict comes from :func:`judge`, which reads all of it.

Exit statuses (stress-ng(1), "EXIT STATUS", checked on 0.15.06 here):

====  =====================================================================
0     success
1     error: bad options, or a fatal resource issue in the harness
2     one or more stressors failed
3     one or more stressors could not initialise for lack of resources
      (ENOMEM, ENOSPC, a missing or unimplemented system call)
4     one or more stressors are not implemented on this architecture/OS
5     a stressor was killed by an unexpected signal
6     a stressor exited via exit(2) unexpectedly; no timing metrics
7     bogo-ops metrics may be untrustworthy (e.g. a stressor was OOM-killed
      while updating its counter)
====  =====================================================================

3 and 4 are *skips* of the stressors concerned, never failures of the machine.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from vetting_core.safeyaml import YamlError, load_yaml

EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "error (bad options or fatal harness resource issue)",
    2: "one or more stressors failed",
    3: "one or more stressors lacked resources (skipped)",
    4: "one or more stressors not implemented here (skipped)",
    5: "a stressor was killed by an unexpected signal",
    6: "a stressor exited unexpectedly; no metrics",
    7: "bogo-ops metrics untrustworthy",
}
SKIP_EXIT_CODES = frozenset({3, 4})
FAIL_EXIT_CODES = frozenset({2, 5, 6, 7})


class StressNgParseError(ValueError):
    """The YAML report is missing or not what stress-ng writes."""


def build_argv(
    stressors: Mapping[str, int],
    *,
    duration_s: float,
    yaml_path: str,
    options: Iterable[str] = (),
    verify: bool = True,
    metrics: bool = True,
    thermal_zones: bool = True,
) -> list[str]:
    """``stress-ng --<name> N ... --timeout Ns --verify --metrics --yaml FILE``.

    ``stressors`` maps a stressor to its instance count (0 = one per online CPU).
    ``options`` are extra stressor options such as ``--cpu-method matrixprod``.
    """
    if not stressors:
        raise ValueError("at least one stressor is needed")
    argv = ["stress-ng"]
    for name, count in stressors.items():
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", name):
            raise ValueError(f"not a stress-ng stressor name: {name!r}")
        argv += [f"--{name}", str(int(count))]
    argv += list(options)
    argv += ["--timeout", f"{max(1, int(round(duration_s)))}s"]
    if verify:
        argv.append("--verify")
    if metrics:
        argv.append("--metrics")
    if thermal_zones:
        argv.append("--tz")
    argv += ["--yaml", yaml_path]
    return argv


@dataclass
class StressorMetrics:
    stressor: str
    bogo_ops: float
    bogo_ops_per_s_real: float
    bogo_ops_per_s_cpu: float
    wall_s: float
    user_s: float
    system_s: float
    cpu_pct_per_instance: float
    max_rss_kb: float
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class StressNgReport:
    version: str
    metrics: dict[str, StressorMetrics]
    thermal: dict[str, dict[str, float]]  # stressor -> zone -> °C
    system: dict[str, Any]


_METRIC_FIELDS = {
    "bogo-ops": "bogo_ops",
    "bogo-ops-per-second-real-time": "bogo_ops_per_s_real",
    "bogo-ops-per-second-usr-sys-time": "bogo_ops_per_s_cpu",
    "wall-clock-time": "wall_s",
    "user-time": "user_s",
    "system-time": "system_s",
    "cpu-usage-per-instance": "cpu_pct_per_instance",
    "max-rss": "max_rss_kb",
}


def _float(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def parse_yaml(text: str) -> StressNgReport:
    """Parse the ``--yaml`` report (metrics per stressor, thermal zones per stressor)."""
    if not text.strip():
        raise StressNgParseError("stress-ng wrote an empty YAML report")
    try:
        doc = load_yaml(text, what="stress-ng YAML report")
    except YamlError as exc:
        raise StressNgParseError(str(exc)) from None
    if not isinstance(doc, dict):
        raise StressNgParseError("stress-ng YAML report is not a mapping")
    system = doc.get("system-info") or {}
    metrics: dict[str, StressorMetrics] = {}
    for entry in doc.get("metrics") or []:
        if not isinstance(entry, dict) or "stressor" not in entry:
            continue
        name = str(entry["stressor"])
        values: dict[str, float] = {}
        extra: dict[str, float] = {}
        for k, v in entry.items():
            if k == "stressor":
                continue
            f = _float(v)
            if f is None:
                continue
            if k in _METRIC_FIELDS:
                values[_METRIC_FIELDS[k]] = f
            else:
                extra[str(k).lstrip("-")] = f
        if "bogo_ops_per_s_real" not in values:
            raise StressNgParseError(f"stressor {name!r} has no bogo-ops-per-second-real-time")
        metrics[name] = StressorMetrics(
            stressor=name,
            bogo_ops=values.get("bogo_ops", 0.0),
            bogo_ops_per_s_real=values["bogo_ops_per_s_real"],
            bogo_ops_per_s_cpu=values.get("bogo_ops_per_s_cpu", 0.0),
            wall_s=values.get("wall_s", 0.0),
            user_s=values.get("user_s", 0.0),
            system_s=values.get("system_s", 0.0),
            cpu_pct_per_instance=values.get("cpu_pct_per_instance", 0.0),
            max_rss_kb=values.get("max_rss_kb", 0.0),
            extra=extra,
        )
    thermal: dict[str, dict[str, float]] = {}
    for entry in doc.get("thermal-zones") or []:
        if not isinstance(entry, dict) or "stressor" not in entry:
            continue
        zones = {str(k): f for k, v in entry.items() if k != "stressor" and (f := _float(v)) is not None}
        thermal[str(entry["stressor"])] = zones
    return StressNgReport(
        version=str(system.get("stress-ng-version", "")),
        metrics=metrics,
        thermal=thermal,
        system=system,
    )


# -- the log ----------------------------------------------------------------------

_LINE = re.compile(r"^stress-ng:\s+(?:\S+\s+)?(?P<level>info|warn|fail|error|metrc|debug|skip):\s*\[(?P<pid>\d+)\]\s?(?P<msg>.*)$")
_WILL_SKIP = re.compile(r"^(?P<name>[\w-]+) stressor will be skipped, (?P<why>.*)$")
_DISABLED = re.compile(r"^disabled '(?P<name>[\w-]+)' as (?P<why>.*)$")
_ABORTED = re.compile(r"^(?:(?P<name>[\w-]+): )?(?:\[\d+\] |process \[\d+\] \((?P<pname>[\w-]+)\) )?aborted early, (?P<why>.*)$")
_SUMMARY = re.compile(r"^(?P<what>passed|failed|skipped|metrics untrustworthy): (?P<count>\d+)(?:: (?P<names>.*))?$")
_SUMMARY_NAME = re.compile(r"([\w-]+) \((\d+)\)")
_FAIL_SUBJECT = re.compile(r"^(?P<name>[\w-]+)(?::| instance \d+)")
_TZ_LINE = re.compile(r"^\s*(?P<zone>\S+)\s+(?P<c>-?\d+(?:\.\d+)?) C \(")


@dataclass
class LogSummary:
    fail_lines: list[str] = field(default_factory=list)
    error_lines: list[str] = field(default_factory=list)
    warn_lines: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # stressor -> why
    failed: set[str] = field(default_factory=set)  # from "failed: N: name (n)" or fail lines
    passed: set[str] = field(default_factory=set)
    untrustworthy: set[str] = field(default_factory=set)
    no_workers: bool = False
    completed: str | None = None  # "successful" / "unsuccessful" / None (no final line)
    summary_seen: bool = False


def parse_log(text: str, stressors: Iterable[str] = ()) -> LogSummary:
    """Read stress-ng's stderr/stdout lines into what passed, failed and was skipped."""
    known = set(stressors)
    out = LogSummary()
    for raw in text.splitlines():
        m = _LINE.match(raw.rstrip())
        if not m:
            if raw.startswith("stress-ng: "):  # e.g. "stress-ng: unrecognized option"
                out.error_lines.append(raw[len("stress-ng: "):].strip())
            continue
        level, msg = m["level"], m["msg"].strip()
        if level == "fail":
            out.fail_lines.append(msg)
            sm = _FAIL_SUBJECT.match(msg)
            if sm and sm["name"] in known:
                out.failed.add(sm["name"])
        elif level == "error":
            out.error_lines.append(msg)
            if msg.startswith("No stress workers invoked"):
                out.no_workers = True
            em = re.match(r"^([\w-]+): \[\d+\] terminated with an error", msg)
            if em and em.group(1) in known:
                out.failed.add(em.group(1))
        elif level == "warn":
            out.warn_lines.append(msg)
        if level in ("info", "warn", "skip"):
            if sk := _WILL_SKIP.match(msg):
                out.skipped[sk["name"]] = sk["why"]
            elif dm := _DISABLED.match(msg):
                out.skipped[dm["name"]] = dm["why"]
            elif ab := _ABORTED.match(msg):
                name = ab["name"] or ab["pname"]
                if name:
                    out.skipped[name] = ab["why"]
            elif su := _SUMMARY.match(msg):
                out.summary_seen = True
                names = {n for n, _ in _SUMMARY_NAME.findall(su["names"] or "")}
                target = {
                    "passed": out.passed,
                    "failed": out.failed,
                    "metrics untrustworthy": out.untrustworthy,
                }.get(su["what"])
                if target is not None:
                    target |= names
                else:  # skipped
                    for n in names:
                        out.skipped.setdefault(n, "skipped by stress-ng")
            elif msg.startswith("successful run completed"):
                out.completed = "successful"
            elif msg.startswith("unsuccessful run completed"):
                out.completed = "unsuccessful"
    return out


def parse_thermal_log(text: str) -> dict[str, dict[str, float]]:
    """Thermal zone lines printed by ``--tz`` (``<stressor>:`` then ``zone  45.00 C (318.15 K)``)."""
    out: dict[str, dict[str, float]] = {}
    current: str | None = None
    for raw in text.splitlines():
        m = _LINE.match(raw.rstrip())
        if not m or m["level"] != "info":
            continue
        msg = m["msg"]
        if re.fullmatch(r"[\w-]+:", msg.strip()):
            current = msg.strip()[:-1]
            continue
        tz = _TZ_LINE.match(msg)
        if tz and current:
            out.setdefault(current, {})[tz["zone"]] = float(tz["c"])
    return out


@dataclass
class StressorOutcome:
    name: str
    verdict: str  # passed / failed / skipped
    reason: str = ""
    metrics: StressorMetrics | None = None


@dataclass
class Judgement:
    verdict: str  # passed / failed / skipped (whole run)
    reason: str
    stressors: dict[str, StressorOutcome]


def judge(
    stressors: Iterable[str],
    returncode: int | None,
    log: LogSummary,
    report: StressNgReport | None,
    *,
    timed_out: bool = False,
) -> Judgement:
    """Decide per stressor and overall, from the log, the YAML metrics and the exit status.

    Order of evidence: explicit failures (``fail:`` lines, ``failed:`` summary, fatal
    exit codes, an "unsuccessful run") fail; explicit skips (will be skipped, aborted
    early for lack of resources, exit 3/4, no workers invoked) skip; a stressor with
    metrics and no failure passes. A stressor that left no trace at all fails: we
    asked for it and cannot prove it ran.
    """
    names = list(dict.fromkeys(stressors))
    metrics = report.metrics if report else {}
    outcomes: dict[str, StressorOutcome] = {}
    unattributed = [
        line for line in log.fail_lines if not any(line.startswith(n) for n in names)
    ]
    for name in names:
        m = metrics.get(name)
        if name in log.failed or name in log.untrustworthy:
            why = next((ln for ln in log.fail_lines if ln.startswith(name)), "")
            if name in log.untrustworthy and not why:
                why = "bogo-ops metrics untrustworthy"
            outcomes[name] = StressorOutcome(name, "failed", why or "stress-ng reported the stressor failed", m)
        elif name in log.skipped and name not in log.passed:
            outcomes[name] = StressorOutcome(name, "skipped", log.skipped[name], m)
        elif m is not None or name in log.passed:
            outcomes[name] = StressorOutcome(name, "passed", "", m)
        elif log.no_workers or returncode in SKIP_EXIT_CODES:
            outcomes[name] = StressorOutcome(
                name, "skipped", EXIT_CODES.get(returncode or 0, "no stress workers invoked"), None
            )
        else:
            outcomes[name] = StressorOutcome(name, "failed", "no metrics and no verdict for this stressor", None)

    reasons: list[str] = []
    if timed_out:
        reasons.append("stress-ng did not finish in time and was killed")
    if unattributed:
        reasons.append("; ".join(unattributed[:3]))
    if returncode in FAIL_EXIT_CODES and not any(o.verdict == "failed" for o in outcomes.values()):
        reasons.append(f"exit status {returncode}: {EXIT_CODES[returncode]}")
    if log.completed == "unsuccessful" and not reasons and not any(
        o.verdict == "failed" for o in outcomes.values()
    ):
        # an unsuccessful run with nothing but skips is a skip (exit 3 case)
        if not all(o.verdict == "skipped" for o in outcomes.values()):
            reasons.append("stress-ng reported an unsuccessful run")
    if returncode == 1 and not log.no_workers:
        reasons.append(
            "stress-ng error: " + ("; ".join(log.error_lines[:2]) or EXIT_CODES[1])
        )
    failed = [o for o in outcomes.values() if o.verdict == "failed"]
    if failed or reasons:
        parts = [f"{o.name}: {o.reason}" for o in failed] + reasons
        return Judgement("failed", "; ".join(parts), outcomes)
    if outcomes and all(o.verdict == "skipped" for o in outcomes.values()):
        return Judgement(
            "skipped",
            "; ".join(f"{o.name}: {o.reason}" for o in outcomes.values()),
            outcomes,
        )
    return Judgement("passed", "", outcomes)
