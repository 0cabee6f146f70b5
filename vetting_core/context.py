"""The stage context: everything a stage plugin's ``async run(ctx)`` may use.

One concrete class serves the agent, local mode, the orchestrator (for
orchestrator-owned stages such as SpecValidate) and the plugin author's test kit;
they differ only in the :class:`Sink` that receives log lines, samples and progress.
:func:`execute_stage` runs a stage with its applicability check, timeout and
verdict rules and always returns a :class:`~vetting_core.protocol.StageResult`.
"""

from __future__ import annotations

import hashlib
import time
import traceback
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import anyio
import structlog

from .model import Artifact, FirmwareSnapshot, Measurement, SubStep, ThresholdRule, Verdict
from .protocol import LogLine, StageResult
from .records import ProbeSpec, StageSpec
from .tools import ToolNotFound, ToolResult, run_tool, stream_tool

if TYPE_CHECKING:
    from .plugins import Registry

log = structlog.get_logger()


PROGRESS_EVERY_S = 5.0
"""A running stage's progress reaches its sink (the heartbeat, the local progress line)
at least this often."""
PROGRESS_TICK_S = 1.0


class StageFailed(Exception):
    """Raise from a stage to fail it with a reason a person can act on."""


class StageSkipped(Exception):
    """Raise from a stage when it does not apply (no GPU, no SMART support...)."""


class StageCannotRun(Exception):
    """Raise when the test cannot run *here*: a tool is not installed, the agent lacks a
    permission, the kernel lacks an interface. The verdict is ``cannot_run``, which is
    not a finding about the hardware (see :func:`vetting_core.model.stops_run` for what
    it does to the run). ``cause`` is ``"tool_missing"``, ``"no_permission"`` or
    ``"unsupported"``; ``tool`` names the missing binary when there is one.

    A :class:`~vetting_core.tools.ToolNotFound` or a :class:`PermissionError` that
    escapes a stage ends it the same way, without the stage catching it.
    """

    def __init__(self, reason: str, *, cause: str = "unsupported", tool: str | None = None) -> None:
        super().__init__(reason)
        self.cause = cause
        self.tool = tool


class StageHold(Exception):
    """Raise to stop and wait for an operator (e.g. the wipe probe found data).

    ``found`` describes what was found; it goes into the stage summary.
    """

    def __init__(self, reason: str, found: Any = None) -> None:
        super().__init__(reason)
        self.found = found


class Sink(Protocol):
    """Where a context sends what the stage produces while it runs."""

    def log(self, line: LogLine) -> None: ...

    def measurement(self, sample: Measurement) -> None: ...

    def progress(self, stage: str, fraction: float | None, message: str) -> None: ...


class MemorySink:
    """Keeps everything in lists (tests, local mode building a report)."""

    def __init__(self) -> None:
        self.lines: list[LogLine] = []
        self.samples: list[Measurement] = []
        self.progress_updates: list[tuple[str, float | None, str]] = []

    def log(self, line: LogLine) -> None:
        self.lines.append(line)

    def measurement(self, sample: Measurement) -> None:
        self.samples.append(sample)

    def progress(self, stage: str, fraction: float | None, message: str) -> None:
        self.progress_updates.append((stage, fraction, message))


def utcnow() -> datetime:
    return datetime.now(UTC)


class SubStepHandle:
    def __init__(self, step: SubStep) -> None:
        self.step = step

    @property
    def summary(self) -> dict[str, Any]:
        return self.step.summary

    def fail(self, reason: str) -> None:
        self.step.state = Verdict.failed
        self.step.reason = reason

    def skip(self, reason: str) -> None:
        self.step.state = Verdict.skipped
        self.step.reason = reason


class Peer(NamedTuple):
    """A test peer leased from the orchestrator: connect to ``host:port``."""

    kind: str
    host: str
    port: int


class PeerUnavailable(Exception):
    """No peer of that kind can be had: local mode, or the orchestrator offers none."""


Peers = Callable[[str], AbstractAsyncContextManager[Peer]]
"""What the agent hands a context: ``peers(kind)`` leases a peer for the ``async with``."""


class StageContext:
    """Handed to ``StageSpec.run``. Attributes are read-only inputs; methods record output.

    - ``params``: the stage's parameters for this run (stage defaults ← profile ← host).
    - ``inventory``: the inventory document collected by InventoryCheck (may be empty).
    - ``spec``: the host's expected spec as a dict, or ``None``.
    - ``non_destructive``: when True the stage must never open a disk for writing.
    - ``override_flags``: operator overrides armed by ``retry_stage`` (e.g. ``{"wipe": True}``).
    - ``workdir``: a private scratch directory for artifacts.
    - ``probes``: the registered inventory probes (InventoryCheck runs them), or ``None``.
    - ``peer(kind)``: lease a test peer the orchestrator supervises (see :meth:`peer`).

    It owns what one stage run produces until :func:`execute_stage` turns it into a
    ``StageResult``: the summary, sub-steps, artifacts, firmware snapshots and the
    inventory document (``inventory_out``), and the progress estimate. Log lines and
    samples are not kept: they go straight to the runner's ``sink``. Build one with
    :func:`build_context`.
    """

    def __init__(
        self,
        *,
        stage: str,
        sink: Sink,
        workdir: Path,
        params: Mapping[str, Any] | None = None,
        profile: str = "quick",
        run_id: int | None = None,
        inventory: Mapping[str, Any] | None = None,
        spec: Mapping[str, Any] | None = None,
        non_destructive: bool = True,
        override_flags: Mapping[str, Any] | None = None,
        thresholds: Sequence[ThresholdRule] = (),
        probes: Sequence[ProbeSpec] | None = None,
        peers: Peers | None = None,
    ) -> None:
        self.stage = stage
        self.sink = sink
        self.workdir = Path(workdir)
        self.params: dict[str, Any] = dict(params or {})
        self.profile = profile
        self.run_id = run_id
        self.inventory: dict[str, Any] = dict(inventory or {})
        self.spec: dict[str, Any] | None = dict(spec) if spec is not None else None
        self.non_destructive = non_destructive
        self.override_flags: dict[str, Any] = dict(override_flags or {})
        self.thresholds = list(thresholds)
        # the registered inventory probes, set by the runner for InventoryCheck
        # (None: the stage falls back to the built-in probes)
        self.probes: list[ProbeSpec] | None = list(probes) if probes is not None else None
        self._peers = peers
        self.summary: dict[str, Any] = {}
        self.substeps: list[SubStep] = []
        self.artifacts: list[Artifact] = []
        self.firmware_snapshots: list[FirmwareSnapshot] = []
        self.inventory_out: dict[str, Any] | None = None
        self.measurement_count = 0
        self.log_count = 0
        duration = self.params.get("duration_s")
        self._expected_s: float | None = float(duration) if isinstance(duration, (int, float)) and duration > 0 else None
        self._estimating = True  # until the stage reports a fraction above 0
        self._reported: tuple[float | None, str] = (None, "")
        self._progress_at = time.monotonic()

    @property
    def peers_available(self) -> bool:
        """True when an orchestrator drives the run and :meth:`peer` can lease from it."""
        return self._peers is not None

    def peer(self, kind: str) -> AbstractAsyncContextManager[Peer]:
        """Lease a test peer from the orchestrator for the duration of an ``async with``::

            async with ctx.peer("iperf3") as peer:      # one client per port, by lease
                await ctx.run_tool(["iperf3", "-c", peer.host, "-p", str(peer.port), "-J"])

        Raises :class:`PeerUnavailable` in local mode (no orchestrator) or when the
        orchestrator offers no peer of that kind; the stage decides what that means.
        """
        if self._peers is None:
            raise PeerUnavailable("no orchestrator to lease a peer from (local mode)")
        return self._peers(kind)

    # -- output -------------------------------------------------------------------
    def log(self, message: str, level: str = "info") -> None:
        self.log_count += 1
        self.sink.log(LogLine(ts=utcnow(), stage=self.stage, level=level, message=message))

    def measure(
        self,
        kind: str,
        key: str,
        value: float | None,
        unit: str = "",
        *,
        text: str | None = None,
        ts: datetime | None = None,
    ) -> Measurement:
        """Record one sample; it is streamed to the orchestrator and judged there."""
        sample = Measurement(
            ts=ts or utcnow(),
            stage=self.stage,
            kind=kind,
            key=key,
            value=None if value is None else float(value),
            unit=unit,
            text=text,
        )
        self.measurement_count += 1
        self.sink.measurement(sample)
        return sample

    def progress(self, fraction: float | None, message: str = "") -> None:
        """Report how far the stage is (0..1, or None when unknown) and what it does.

        A stage need not call it on a timer: while it runs, :func:`execute_stage`
        repeats the last report at least every :data:`PROGRESS_EVERY_S` seconds and,
        until the stage reports a fraction above 0, estimates one from the time it
        expects to take (:meth:`expect_duration`, else its ``duration_s`` parameter).
        """
        self._reported = (fraction, message)
        if fraction is not None and fraction > 0:
            self._estimating = False
        self._send_progress(fraction, message)

    def expect_duration(self, seconds: float) -> None:
        """How long the whole stage should take (e.g. ``NICs × directions × duration_s``):
        the progress estimate until the stage reports fractions of its own."""
        self._expected_s = float(seconds) if seconds and seconds > 0 else None

    def _send_progress(self, fraction: float | None, message: str) -> None:
        self._progress_at = time.monotonic()
        self.sink.progress(self.stage, fraction, message)

    async def _keep_progress(self) -> None:
        """Runs beside the stage (see :meth:`progress`)."""
        started = time.monotonic()
        while True:
            await anyio.sleep(PROGRESS_TICK_S)
            fraction, message = self._reported
            now = time.monotonic()
            if self._estimating and self._expected_s:
                estimate = min(0.99, (now - started) / self._expected_s)
                if fraction is None or estimate >= fraction + 0.01:
                    fraction = estimate
                    self._reported = (fraction, message)
                    self._send_progress(fraction, message)
                    continue
            if now - self._progress_at >= PROGRESS_EVERY_S:
                self._send_progress(fraction, message)

    @asynccontextmanager
    async def substep(self, name: str) -> AsyncIterator[SubStepHandle]:
        """A per-disk/per-NIC/per-GPU unit. An exception inside fails the sub-step and
        propagates; ``handle.fail(reason)``/``handle.skip(reason)`` set the verdict
        without raising."""
        step = SubStep(
            stage_name=self.stage,
            ordinal=len(self.substeps),
            name=name,
            state=Verdict.running,
            started_at=utcnow(),
        )
        self.substeps.append(step)
        handle = SubStepHandle(step)
        try:
            yield handle
        except BaseException as exc:
            if step.state is Verdict.running:
                step.state = Verdict.failed
                step.reason = step.reason or f"{type(exc).__name__}: {exc}"
            raise
        finally:
            step.completed_at = utcnow()
            if step.state is Verdict.running:
                step.state = Verdict.passed

    def artifact(self, kind: str, path: str | Path) -> Artifact:
        path = Path(path)
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        art = Artifact(
            kind=kind,
            path=str(path.resolve()),
            sha256=digest.hexdigest(),
            size_bytes=path.stat().st_size,
            stage=self.stage,
        )
        self.artifacts.append(art)
        return art

    def save_text(self, kind: str, name: str, text: str) -> Artifact:
        """Write ``text`` under the workdir and record it as an artifact."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / name
        path.write_text(text)
        return self.artifact(kind, path)

    def firmware(
        self, component: str, identifier: str, version: str, vendor: str = "", **raw: Any
    ) -> None:
        self.firmware_snapshots.append(
            FirmwareSnapshot(
                component=component, identifier=identifier, version=version, vendor=vendor, raw=raw
            )
        )

    # -- tools --------------------------------------------------------------------
    async def run_tool(
        self,
        argv: Sequence[str],
        *,
        timeout: float = 300.0,
        artifact: str | None = None,
        stream: bool = False,
    ) -> ToolResult:
        """Run a tool (``LC_ALL=C``, no stdin, killed on timeout), log the command, and
        keep stdout as an artifact named ``artifact`` when given. With ``stream=True``
        every output line also goes to the stage log as it arrives."""
        self.log(f"$ {' '.join(map(str, argv))}", level="debug")
        if stream:
            result = await stream_tool(
                argv, lambda _s, line: self.log(line, level="debug"), timeout=timeout
            )
        else:
            result = await run_tool(argv, timeout=timeout)
        if result.timed_out:
            self.log(f"{argv[0]} timed out after {timeout:.0f}s and was killed", level="error")
        if artifact:
            self.save_text(artifact, f"{artifact}.txt", result.stdout)
        return result


def build_context(stage: str, *, registry: Registry | None = None, **inputs: Any) -> StageContext:
    """The context a runner hands to one stage: the one place that decides what a stage
    is given beyond the run's inputs, used by the agent (connected and local modes,
    inventory collection) and the plugin test kit.

    ``inputs`` are :class:`StageContext`'s (``sink``, ``workdir``, ``params``, ...).
    ``registry``: the runner's plugin registry; its inventory probes become
    ``ctx.probes`` (InventoryCheck runs them). Without one the stage sees ``None`` and
    InventoryCheck falls back to the built-in probes, as a plugin author's test wants.
    ``workdir`` is the stage's own scratch directory; :func:`stage_workdir` names it
    inside a run's work root.
    """
    if registry is not None:
        inputs["probes"] = list(registry.probes.values())
    return StageContext(stage=stage, **inputs)


def stage_workdir(root: Path, stage: str, ordinal: int) -> Path:
    """``<root>/<NN>-<stage>``: one scratch directory per planned stage of a run, in
    plan order, so a run's work root reads like its plan."""
    return Path(root) / f"{ordinal:02d}-{stage}"


def _cannot_run(exc: Exception, summary: dict[str, Any]) -> str:
    """The reason of a ``cannot_run`` verdict; records the cause in the summary."""
    if isinstance(exc, StageCannotRun):
        cause, tool = exc.cause, exc.tool
    elif isinstance(exc, ToolNotFound):
        cause, tool = "tool_missing", exc.tool
    else:
        cause, tool = "no_permission", None
    summary["cannot_run"] = {"cause": cause, "tool": tool}
    if isinstance(exc, PermissionError):
        where = f": {exc.filename}" if exc.filename else ""
        return f"no permission{where} ({exc.strerror or exc}); run the agent as root"
    return str(exc)


async def execute_stage(
    spec: StageSpec, ctx: StageContext, *, timeout_s: float | None = None
) -> StageResult:
    """Run one stage and turn whatever happened into a :class:`StageResult`.

    - the stage does not apply to the inventory → ``skipped`` with the reason
      (an ``applies`` check that raises fails the stage instead, traceback logged);
    - it raises ``StageFailed``/``StageSkipped``/``StageHold`` → that verdict;
    - it raises ``StageCannotRun``, or lets a ``ToolNotFound`` or a ``PermissionError``
      escape → ``cannot_run`` (the test could not run here; not a hardware finding),
      with ``summary["cannot_run"] = {"cause": …, "tool": …}``;
    - it raises anything else → ``failed``, the traceback in the stage log;
    - it exceeds ``timeout_s`` (default ``spec.timeout_s``; the run plan's value
      when given) → ``failed``. A ``TimeoutError`` raised *by the stage itself*
      (a socket timeout) is a crash, not the stage timeout;
    - a failed sub-step fails the stage.

    Cancellation from outside (the run was aborted) is not caught: it propagates.
    """
    limit = spec.timeout_s if timeout_s is None else timeout_s
    started = utcnow()
    verdict, reason, hold = Verdict.passed, None, False
    try:
        skip_reason = spec.applies(ctx.inventory) if spec.applies else None
    except Exception as exc:
        skip_reason = None
        verdict = Verdict.failed
        reason = f"applicability check crashed: {type(exc).__name__}: {exc}"
        ctx.log(traceback.format_exc(), level="error")
        ctx.log(f"failed: {reason}", level="error")
    if verdict is Verdict.failed:
        pass
    elif skip_reason:
        verdict, reason = Verdict.skipped, skip_reason
        ctx.log(f"skipped: {skip_reason}")
    else:
        scope = anyio.CancelScope(deadline=anyio.current_time() + limit)
        async with anyio.create_task_group() as keeper:
            # every exception of the stage is caught inside: the group only ever ends
            # normally, or by a cancellation from outside
            keeper.start_soon(ctx._keep_progress)
            try:
                with scope:
                    await spec.run(ctx)
            except StageFailed as exc:
                verdict, reason = Verdict.failed, str(exc)
            except StageSkipped as exc:
                verdict, reason = Verdict.skipped, str(exc)
            except StageHold as exc:
                verdict, reason, hold = Verdict.hold, str(exc), True
                if exc.found is not None:
                    ctx.summary["found"] = exc.found
            except (StageCannotRun, ToolNotFound, PermissionError) as exc:
                verdict, reason = Verdict.cannot_run, _cannot_run(exc, ctx.summary)
            except Exception as exc:
                verdict, reason = Verdict.failed, f"stage crashed: {type(exc).__name__}: {exc}"
                ctx.log(traceback.format_exc(), level="error")
            keeper.cancel_scope.cancel()
        if scope.cancelled_caught:
            verdict, reason = Verdict.failed, f"stage timed out after {limit:g}s"
            for step in ctx.substeps:
                if step.state is Verdict.failed and (step.reason or "").startswith("Cancelled"):
                    step.reason = reason
        if verdict is Verdict.passed:
            failed = [s for s in ctx.substeps if s.state is Verdict.failed]
            if failed:
                verdict = Verdict.failed
                reason = "; ".join(f"{s.name}: {s.reason}" for s in failed)
        if reason:
            level = {Verdict.failed: "error", Verdict.cannot_run: "warning"}.get(verdict, "info")
            ctx.log(f"{verdict.label}: {reason}", level=level)
    return StageResult(
        stage=spec.name,
        verdict=verdict,
        reason=reason,
        started_at=started,
        completed_at=utcnow(),
        summary=ctx.summary,
        substeps=ctx.substeps,
        inventory=ctx.inventory_out,
        firmware=ctx.firmware_snapshots,
        artifacts=ctx.artifacts,
        hold=hold,
    )
