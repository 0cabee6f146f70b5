"""A pytest plugin for people who write Vetting plugins.

Activate it in your test suite's top-level ``conftest.py``::

    pytest_plugins = ["vetting_core.testing"]

It gives you, without a server, an agent or the hardware:

- :func:`make_registry` / the ``vetting_registry`` fixture: a registry built from the
  plugin modules you name (plus the core operators and profiles), exactly as the
  server and the agent build theirs, so a broken hook or a duplicate name fails here;
- :func:`run_stage` (async) / :func:`run_stage_sync`: run a ``StageSpec`` against a
  real :class:`~vetting_core.StageContext` with a :class:`~vetting_core.MemorySink` and
  get back a :class:`StageRun` — the ``StageResult`` plus every sample, log line and
  progress update — judged with the stage's default thresholds;
- the ``fake_tools`` fixture: executables on ``PATH`` that replay captured output of
  a real tool (stdout, stderr, exit code, optional delay or hang) and record the argv
  they were called with; this is how a stage is tested on a machine without the
  hardware while its parser is tested on what the real tool printed;
- :func:`assert_measured` / :func:`assert_verdict`: assertions with messages that
  show what *was* measured and why a rule breached.

This module imports pytest, so only test code imports it; it imports nothing outside
``vetting_core``.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import stat
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import anyio
import msgspec
import pytest

from . import builtin
from .context import MemorySink, Peers, StageContext, build_context, execute_stage
from .model import (
    Host,
    Measurement,
    Run,
    RunRecord,
    Severity,
    Stage,
    ThresholdEvaluation,
    ThresholdRule,
    Verdict,
)
from .plugins import Registry, load_registry
from .protocol import LogLine, StageResult
from .records import OperatorSpec, StageSpec
from .statemachine import RunState
from .thresholds import BUILTIN_OPERATORS, ThresholdEngine, judge_stage

__all__ = [
    "Capture",
    "FakeTools",
    "Judgement",
    "StageRun",
    "assert_measured",
    "assert_verdict",
    "default_rules",
    "load_capture",
    "make_registry",
    "run_record",
    "run_stage",
    "run_stage_sync",
]


# -- registries --------------------------------------------------------------------
def _named(plugin: Any) -> tuple[str, Any]:
    if isinstance(plugin, tuple):
        return plugin
    if isinstance(plugin, ModuleType):
        return plugin.__name__, plugin
    return type(plugin).__name__, plugin


def make_registry(
    *plugins: Any,
    builtins: bool = True,
    entry_points: bool = False,
    blocked: Iterable[str] = (),
) -> Registry:
    """A registry from plugin modules (or ``(name, module)`` pairs).

    ``builtins`` adds the core plugin (built-in operators, the quick/deep/soak
    profiles) as the entry point ``core`` would. ``entry_points=True`` loads whatever
    is installed as well. A plugin whose hook raises is in ``registry.broken``; use
    ``assert not registry.broken`` to fail on it.
    """
    named = [_named(p) for p in plugins]
    if builtins and not entry_points and all(p is not builtin for _, p in named):
        named.insert(0, ("core", builtin))
    return load_registry(entry_points=entry_points, plugins=named, blocked=blocked, environ={})


# -- running a stage -----------------------------------------------------------------
class Judgement(NamedTuple):
    rule: ThresholdRule
    sample: Measurement
    observed: Any
    passed: bool

    def __str__(self) -> str:
        r = self.rule
        outcome = "passed" if self.passed else "BREACH"
        return (
            f"{self.sample.kind}/{self.sample.key}={self.observed!r} {r.op} {r.threshold!r}"
            f" ({r.severity.value}): {outcome}"
        )


def default_rules(spec: StageSpec, extra: Iterable[ThresholdRule] = ()) -> list[ThresholdRule]:
    """The stage's default thresholds scoped to its name (as ``plan_run`` does), plus
    ``extra`` rules (e.g. a profile fragment's)."""
    rules = [
        msgspec.structs.replace(r, stage=spec.name) if r.stage == "*" else r for r in spec.thresholds
    ]
    return rules + list(extra)


@dataclass
class StageRun:
    """Everything one stage run produced."""

    spec: StageSpec
    result: StageResult
    samples: list[Measurement]
    lines: list[LogLine]
    progress: list[tuple[str, float | None, str]]
    context: StageContext
    rules: list[ThresholdRule] = field(default_factory=list)
    operators: dict[str, OperatorSpec] = field(default_factory=dict)

    @property
    def verdict(self) -> Verdict:
        return self.result.verdict

    @property
    def reason(self) -> str | None:
        return self.result.reason

    @property
    def log_text(self) -> str:
        return "\n".join(f"[{line.level}] {line.message}" for line in self.lines)

    def measured(self, kind: str, key: str = "*") -> list[Measurement]:
        """Samples of ``kind`` whose key matches the glob ``key``."""
        return [s for s in self.samples if s.kind == kind and fnmatchcase(s.key, key)]

    def series(self) -> list[str]:
        return sorted({f"{s.kind}/{s.key}" for s in self.samples})

    def judge(self, samples: Sequence[Measurement] | None = None) -> list[Judgement]:
        """Judge samples (default: all) with the run's rules, as the server would."""
        samples = list(self.samples if samples is None else samples)
        engine = ThresholdEngine(self.rules, self.operators)
        res = engine.evaluate(samples)
        return [Judgement(self.rules[e.rule], samples[e.sample], e.observed, e.passed) for e in res.evaluations]

    def breaches(self) -> list[Judgement]:
        return [j for j in self.judge() if not j.passed]

    def final_verdict(self) -> Verdict:
        """The orchestrator's view (:func:`~vetting_core.thresholds.judge_stage`): a
        critical breach fails a stage the plugin passed."""
        critical = [j for j in self.breaches() if j.rule.severity is Severity.critical]
        return judge_stage(self.verdict, self.reason, critical).verdict


async def run_stage(
    stage: StageSpec | str,
    /,
    *,
    params: Mapping[str, Any] | None = None,
    inventory: Mapping[str, Any] | None = None,
    spec: Mapping[str, Any] | None = None,
    non_destructive: bool = True,
    profile: str = "quick",
    defaults: bool = True,
    registry: Registry | None = None,
    operators: Iterable[OperatorSpec] = (),
    thresholds: Iterable[ThresholdRule] = (),
    override_flags: Mapping[str, Any] | None = None,
    workdir: str | os.PathLike[str] | None = None,
    timeout_s: float | None = None,
    run_id: int | None = 1,
    peers: Peers | None = None,
) -> StageRun:
    """Run one stage the way the agent does (``execute_stage``) and collect its output.

    ``stage`` is a ``StageSpec`` or a stage name looked up in ``registry``. ``params``
    are merged over the stage's defaults for ``profile`` (``defaults=False`` uses only
    ``params``). ``spec`` is the host's expected spec. Threshold rules: the stage's
    defaults plus ``thresholds``; operators: the registry's, else the built-ins plus
    ``operators``. ``timeout_s`` overrides ``StageSpec.timeout_s``. ``peers`` stands in
    for the orchestrator's test peers (``ctx.peer(kind)``): a function returning an async
    context manager that yields a :class:`~vetting_core.Peer`.
    """
    if isinstance(stage, str):
        if registry is None:
            raise TypeError("run_stage(name) needs registry=")
        stage = registry.stage(stage)
    if timeout_s is not None:
        stage = dataclasses.replace(stage, timeout_s=timeout_s)
    merged = stage.params_for(profile) if defaults else {}
    merged.update(params or {})
    sink = MemorySink()
    rules = default_rules(stage, thresholds)
    ops = dict(registry.operators) if registry is not None else {o.name: o for o in BUILTIN_OPERATORS}
    ops.update({o.name: o for o in operators})
    ctx = build_context(
        stage.name,
        sink=sink,
        workdir=Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="vetting-stage-")),
        params=merged,
        profile=profile,
        run_id=run_id,
        inventory=inventory,
        spec=spec,
        non_destructive=non_destructive,
        override_flags=override_flags,
        thresholds=rules,
        peers=peers,
    )
    result = await execute_stage(stage, ctx)
    return StageRun(
        spec=stage,
        result=result,
        samples=sink.samples,
        lines=sink.lines,
        progress=sink.progress_updates,
        context=ctx,
        rules=rules,
        operators=ops,
    )


def run_stage_sync(stage: StageSpec | str, /, **kwargs: Any) -> StageRun:
    """:func:`run_stage` for synchronous tests (not inside a running event loop)."""

    async def main() -> StageRun:
        return await run_stage(stage, **kwargs)

    return anyio.run(main, backend="asyncio")


def run_record(*runs: StageRun, host_name: str = "test-host", profile: str = "quick") -> RunRecord:
    """A :class:`~vetting_core.model.RunRecord` made of stage runs, as the server would
    assemble it at Reporting: stages, sub-steps, samples, rules, breaches, artifacts.
    Feed it to a report builder to test a report section on real stage output."""
    stages, substeps, samples, rules, evaluations, artifacts = [], [], [], [], [], []
    failed = None
    for ordinal, r in enumerate(runs):
        verdict = r.final_verdict()
        failed = failed or (r.spec.name if verdict is Verdict.failed else None)
        stages.append(
            Stage(
                name=r.spec.name,
                ordinal=ordinal,
                state=verdict,
                reason=r.reason,
                started_at=r.result.started_at,
                completed_at=r.result.completed_at,
                summary=r.result.summary,
            )
        )
        substeps.extend(r.result.substeps)
        samples.extend(r.samples)
        artifacts.extend(r.result.artifacts)
        start = len(rules)
        rules.extend(msgspec.structs.replace(rule, id=start + i + 1) for i, rule in enumerate(r.rules))
        for j in r.judge():
            evaluations.append(
                ThresholdEvaluation(
                    rule_id=start + r.rules.index(j.rule) + 1,
                    stage=j.sample.stage,
                    kind=j.sample.kind,
                    key=j.sample.key,
                    ts=j.sample.ts,
                    observed=j.observed if isinstance(j.observed, (int, float, str)) else None,
                    passed=j.passed,
                    severity=j.rule.severity,
                )
            )
    first = runs[0].result.started_at if runs else None
    last = runs[-1].result.completed_at if runs else None
    return RunRecord(
        host=Host(id=1, name=host_name, mac="02:00:00:00:00:01"),
        run=Run(
            id=1,
            host_id=1,
            state=(RunState.Failed if failed else RunState.Completed).value,
            result="failed" if failed else "passed",
            failed_stage=failed,
            profile=profile,
            non_destructive=True,
            started_at=first,
            completed_at=last,
        ),
        stages=stages,
        substeps=substeps,
        measurements=samples,
        thresholds=rules,
        evaluations=evaluations,
        artifacts=artifacts,
    )


# -- assertions ----------------------------------------------------------------------
def assert_verdict(run: StageRun, verdict: Verdict | str, reason: str | None = None) -> None:
    """The stage ended with ``verdict`` (and, when given, ``reason`` is in its reason)."""
    want = Verdict(verdict)
    if run.verdict is not want:
        raise AssertionError(
            f"stage {run.spec.name} ended {run.verdict.value!r}, expected {want.value!r}; "
            f"reason: {run.reason!r}\n--- stage log ---\n{run.log_text[-4000:]}"
        )
    if reason is not None and reason not in (run.reason or ""):
        raise AssertionError(f"reason {run.reason!r} does not contain {reason!r}")


def assert_measured(
    run: StageRun,
    kind: str,
    key: str = "*",
    *,
    value: float | None = None,
    rel: float | None = None,
    abs: float | None = None,  # noqa: A002 - mirrors pytest.approx
    text: str | None = None,
    unit: str | None = None,
    count: int | None = None,
    passes: bool | None = None,
) -> list[Measurement]:
    """Assert the stage measured ``kind``/``key`` (a glob) and return those samples.

    - ``value`` (with ``rel``/``abs`` tolerances) and ``text`` are compared with the
      *last* matching sample: the stage's final word on that series;
    - ``count``: how many samples matched;
    - ``passes=True``: at least one threshold rule judges these samples and none
      breached; ``passes=False``: at least one breached. The rules are the stage's
      default thresholds (plus any given to :func:`run_stage`).
    """
    samples = run.measured(kind, key)
    if not samples:
        raise AssertionError(
            f"stage {run.spec.name} measured nothing for {kind}/{key}; "
            f"it measured: {', '.join(run.series()) or 'nothing at all'}"
        )
    last = samples[-1]
    if count is not None and len(samples) != count:
        raise AssertionError(f"{kind}/{key}: {len(samples)} samples, expected {count}")
    if value is not None:
        if last.value is None or last.value != pytest.approx(value, rel=rel, abs=abs):
            raise AssertionError(f"{kind}/{last.key} = {last.value!r}, expected {value!r}")
    if text is not None and last.text != text:
        raise AssertionError(f"{kind}/{last.key} text = {last.text!r}, expected {text!r}")
    if unit is not None and last.unit != unit:
        raise AssertionError(f"{kind}/{last.key} unit = {last.unit!r}, expected {unit!r}")
    if passes is not None:
        judged = run.judge(samples)
        if not judged:
            raise AssertionError(
                f"no threshold rule judges {kind}/{key} in stage {run.spec.name}; rules: "
                + ", ".join(f"{r.kind}/{r.key} {r.op} {r.threshold!r}" for r in run.rules)
            )
        breached = [j for j in judged if not j.passed]
        if passes and breached:
            raise AssertionError("threshold breached:\n  " + "\n  ".join(map(str, breached)))
        if not passes and not breached:
            raise AssertionError("expected a breach, every rule passed:\n  " + "\n  ".join(map(str, judged)))
    return samples


# -- captured tool output --------------------------------------------------------------
class Capture(NamedTuple):
    stdout: str
    stderr: str
    returncode: int


def load_capture(directory: str | os.PathLike[str], case: str) -> Capture:
    """Read ``<case>.stdout``, ``<case>.stderr`` (optional) and ``<case>.rc`` (optional,
    default 0) from a fixture directory such as ``tests/fixtures/<tool>/<version>/``."""
    d = Path(directory)
    out = d / f"{case}.stdout"
    if not out.exists():
        known = sorted({p.stem for p in d.glob("*.stdout")})
        raise FileNotFoundError(f"no capture {case!r} in {d} (have: {', '.join(known) or 'none'})")
    err = d / f"{case}.stderr"
    rc = d / f"{case}.rc"
    return Capture(
        stdout=out.read_text(errors="replace"),
        stderr=err.read_text(errors="replace") if err.exists() else "",
        returncode=int(rc.read_text().strip()) if rc.exists() else 0,
    )


_CAT = shutil.which("cat") or "/bin/cat"
_SLEEP = shutil.which("sleep") or "/bin/sleep"


@dataclass
class FakeTool:
    name: str
    path: Path
    calls_file: Path

    def calls(self) -> list[list[str]]:
        """The argv (without the program name) of every invocation, oldest first."""
        if not self.calls_file.exists():
            return []
        raw = self.calls_file.read_text()
        return [record.split("\x1f")[1:] for record in raw.split("\x1e") if record]

    def pids(self) -> list[int]:
        """Process ids of every invocation (``exec`` keeps them for a hanging fake), to
        check that a timed-out or cancelled tool was really killed."""
        f = self.calls_file.with_suffix(".pids")
        return [int(x) for x in f.read_text().split()] if f.exists() else []


class FakeTools:
    """Executables that replay captured output, first on ``PATH``.

    Each fake is a small ``/bin/sh`` script: it records its argv, optionally sleeps,
    prints the stdout/stderr bytes it was given and exits with the given code
    (``hang=True``: prints, then never exits — to test timeouts and cancellation).
    """

    def __init__(self, bindir: Path, monkeypatch: pytest.MonkeyPatch | None = None) -> None:
        self.bindir = Path(bindir)
        self.bindir.mkdir(parents=True, exist_ok=True)
        self._data = self.bindir / ".data"
        self._data.mkdir(exist_ok=True)
        self.tools: dict[str, FakeTool] = {}
        path = f"{self.bindir}{os.pathsep}{os.environ.get('PATH', '')}"
        if monkeypatch is not None:
            monkeypatch.setenv("PATH", path)
        else:
            os.environ["PATH"] = path

    def add(
        self,
        name: str,
        *,
        stdout: str | bytes | Path = b"",
        stderr: str | bytes | Path = b"",
        exit_code: int = 0,
        delay_s: float = 0.0,
        hang: bool = False,
    ) -> FakeTool:
        """Install (or replace) the fake ``name``. ``stdout``/``stderr`` are the bytes
        to print, or a ``Path`` to a captured file."""
        if "/" in name or not name:
            raise ValueError(f"tool name must be a plain program name, got {name!r}")
        files = {}
        for stream, content in (("stdout", stdout), ("stderr", stderr)):
            f = self._data / f"{name}.{stream}"
            if isinstance(content, Path):
                f.write_bytes(content.read_bytes())
            else:
                f.write_bytes(content.encode() if isinstance(content, str) else content)
            files[stream] = f
        calls = self._data / f"{name}.calls"
        lines = [
            "#!/bin/sh",
            f"# fake {name} installed by vetting_core.testing",
            # one record, one write: concurrent invocations never interleave their argv
            f"us=$(printf '\\037'); rs=$(printf '\\036'); rec={shlex.quote(name)}",
            'for a in "$@"; do rec="$rec$us$a"; done',
            f"printf '%s' \"$rec$rs\" >> {shlex.quote(str(calls))}",
            f"echo $$ >> {shlex.quote(str(calls.with_suffix('.pids')))}",
        ]
        if delay_s and not hang:
            lines.append(f"{_SLEEP} {float(delay_s)}")
        lines.append(f"{_CAT} {shlex.quote(str(files['stdout']))}")
        lines.append(f"{_CAT} {shlex.quote(str(files['stderr']))} >&2")
        lines.append(f"exec {_SLEEP} 86400" if hang else f"exit {int(exit_code)}")
        path = self.bindir / name
        path.write_text("\n".join(lines) + "\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        tool = FakeTool(name=name, path=path, calls_file=calls)
        self.tools[name] = tool
        return tool

    def replay(self, name: str, directory: str | os.PathLike[str], case: str, **kw: Any) -> FakeTool:
        """Install ``name`` replaying the capture ``case`` from ``directory``."""
        cap = load_capture(directory, case)  # checks the case exists, reads the exit code
        d = Path(directory)
        err = d / f"{case}.stderr"
        # the files are copied byte for byte: what the real tool printed, undecoded
        return self.add(
            name, stdout=d / f"{case}.stdout", stderr=err if err.exists() else b"", exit_code=cap.returncode, **kw
        )

    def calls(self, name: str) -> list[list[str]]:
        return self.tools[name].calls()


# -- fixtures ------------------------------------------------------------------------
@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Vetting runs on asyncio; anyio's pytest plugin picks the backend from this."""
    return "asyncio"


@pytest.fixture
def fake_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeTools:
    """Install fake tools for this test: ``fake_tools.replay("memtester", DIR, "pass")``."""
    return FakeTools(tmp_path / "fake-bin", monkeypatch)


@pytest.fixture
def vetting_registry():
    """A factory: ``vetting_registry(my_plugin_module)`` → ``Registry`` (fails the test
    when a plugin's hook raised)."""

    def factory(*plugins: Any, **kw: Any) -> Registry:
        reg = make_registry(*plugins, **kw)
        if reg.broken:
            raise AssertionError(
                "broken plugin(s): " + "; ".join(f"{b.name} in {b.stage}: {b.error}" for b in reg.broken)
            )
        return reg

    return factory


@pytest.fixture
def stage_workdir(tmp_path: Path) -> Path:
    """A scratch directory for ``run_stage(..., workdir=stage_workdir)``."""
    d = tmp_path / "stage-workdir"
    d.mkdir()
    return d
