"""One run driven by the orchestrator: the connected flow of ``pxe``, ``connect`` and
``host`` modes.

``hello`` → ``claim`` → for each planned agent stage (in order, or where the
orchestrator's ``next_stage`` points): run it, stream its lines and samples through
the spool, queue its result behind them, wait for the orchestrator's verdict, act on
it (next stage, hold, stop). Beside the pipeline, in one task group: the spool
deliverer (:mod:`vetting_agent.delivery`), the buffer flusher, the sensor sidecar and
the heartbeat loop, whose reply carries the control channel (``continue``,
``shutdown``, ``abort``, ``retry_stage``; :mod:`vetting_agent.control`).

:class:`RunSession` connects (hello, claim, the spool); :class:`ClaimedRun` runs the
pipeline and reads the orchestrator's commands from the shared :class:`ControlChannel`.

Orchestrator-owned stages (SpecValidate) are the server's business in these modes:
it resolves them inside ``/result``; the agent skips them. A stage keeps running while
the orchestrator is unreachable; only the step *after* a stage waits for its verdict.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anyio
import httpx
import msgspec
import structlog

from vetting_core.model import Verdict
from vetting_core.plugins import Registry
from vetting_core.protocol import (
    Claim,
    ClaimReply,
    Hello,
    HoldRequest,
    LogLine,
    PlannedStage,
    ResultReply,
    StageResult,
)
from vetting_core.context import build_context, stage_workdir, utcnow
from vetting_core.statemachine import FAILED, RunState

from . import AGENT_VERSION
from .backoff import Backoff
from .client import AgentClient, AuthRejected, ClientError, Rejected, Unreachable, decode_result_reply
from .cmdline import RunCoordinates
from .control import AgentFatal, ControlChannel
from .delivery import deliver_loop
from .execution import run_planned
from .peers import orchestrator_peers
from .uploads import read_uploads
from .hold import DEFAULT_AUTHORIZED_KEYS, install_key
from .inventory import INVENTORY_STAGE
from .inventory import collect as collect_inventory
from .netinfo import describe_self
from .outbound import Outbound
from .sidecar import SensorSidecar
from .spool import Spool, SpoolRejected

log = structlog.get_logger()

Mode = Literal["pxe", "connect", "host"]


@dataclass
class AgentOptions:
    """Knobs of the connected modes. Defaults suit the live image; tests shrink them."""

    spool_dir: Path = Path("/var/lib/vetting-agent/spool")
    power_off: bool = False  # act on ``shutdown`` with ``poweroff_argv`` (pxe mode: True)
    poweroff_argv: tuple[str, ...] = ("systemctl", "poweroff")
    authorized_keys: Path = Path(DEFAULT_AUTHORIZED_KEYS)
    hold_ip: str | None = None  # the address operators SSH to; default: the hello address
    non_destructive_only: bool = False  # host mode
    allow_hold: bool = True  # host mode: never install an SSH key on an installed machine
    backoff_initial_s: float = 0.5
    backoff_cap_s: float = 30.0
    startup_timeout_s: float = 900.0  # give up hello/claim after this long
    drain_timeout_s: float = 900.0  # how long to keep delivering the spool at the end
    final_wait_s: float = 120.0  # after the pipeline: wait this long for shutdown/abort
    flush_interval_s: float = 1.0
    flush_max_items: int = 5000
    sidecar: bool = True
    sidecar_sources: list[Any] | None = None  # None: discover this machine's sensors
    sensor_interval_s: float = 1.0
    ipmi_interval_s: float = 30.0
    http_timeout_s: float = 15.0
    peer_wait_s: float = 600.0  # how long a stage waits for a test peer (iperf3 port) from the orchestrator
    transport: httpx.AsyncBaseTransport | None = None


class Outcome(msgspec.Struct, kw_only=True):
    run_id: int
    state: str  # the run's last known state on the orchestrator
    passed: bool
    reason: str | None = None
    verdicts: dict[str, str] = {}
    produced: dict[str, int] = {}  # log lines, sensor samples, results written to the spool
    rejected: int = 0  # spool entries the orchestrator refused for good
    hold_ssh: str | None = None

    @property
    def exit_code(self) -> int:
        """0 passed, 1 failed, 3 incomplete (nothing failed; a stage could not run here)."""
        if not self.passed:
            return 1
        return 3 if "cannot_run" in self.verdicts.values() else 0


async def _retrying(what: str, call: Any, options: AgentOptions) -> Any:
    """Call until it answers, with backoff, for at most ``startup_timeout_s``."""
    backoff = Backoff(options.backoff_initial_s, options.backoff_cap_s)
    with anyio.fail_after(options.startup_timeout_s):
        while True:
            try:
                return await call()
            except Unreachable as exc:
                delay = backoff.next()
                log.warning("agent.unreachable", call=what, error=str(exc), retry_in=round(delay, 2))
                await anyio.sleep(delay)


def _run_failed(reply: ResultReply) -> bool:
    """The orchestrator's reply says the run failed here (or wants the host held)."""
    return reply.hold or reply.verdict in (Verdict.failed, Verdict.hold) or reply.next_state in FAILED


class RunSession:
    """Connecting to the orchestrator for one run: ``hello``, ``claim``, the spool opened
    and reconciled with what the orchestrator stored; then a :class:`ClaimedRun` runs
    the pipeline. Owns the run's coordinates and its :class:`ControlChannel`."""

    def __init__(
        self,
        coords: RunCoordinates,
        registry: Registry,
        options: AgentOptions | None = None,
        *,
        mode: Mode = "connect",
    ) -> None:
        self.coords = coords
        self.registry = registry
        self.options = options or AgentOptions()
        self.mode = mode
        self.run_id = coords.run_id
        self.control = ControlChannel(coords.run_id)

    async def run(self) -> Outcome:
        opts = self.options
        async with AgentClient(
            self.coords.server,
            self.coords.token,
            run_id=self.run_id,
            timeout=opts.http_timeout_s,
            transport=opts.transport,
        ) as client:
            me = describe_self(self.coords.server)
            hello = Hello(
                agent_version=AGENT_VERSION,
                hostname=me["hostname"] or "",
                ip=me["ip"],
                mac=me["mac"],
                boot_id=me["boot_id"] or "",
                mode=self.mode,
            )
            try:
                reply = await _retrying("hello", lambda: client.hello(hello), opts)
                self.control.run_state = reply.state
                claim = await _retrying(
                    "claim",
                    lambda: client.claim(
                        Claim(
                            agent_version=AGENT_VERSION,
                            hostname=hello.hostname,
                            stages_installed=sorted(self.registry.stages),
                        )
                    ),
                    opts,
                )
            except (AuthRejected, Rejected) as exc:
                log.error("agent.refused", run=self.run_id, error=str(exc))
                return Outcome(run_id=self.run_id, state=self.control.run_state, passed=False, reason=str(exc))
            except TimeoutError:
                reason = f"orchestrator {self.coords.server} unreachable for {opts.startup_timeout_s:.0f}s"
                log.error("agent.gave_up", run=self.run_id, reason=reason)
                return Outcome(run_id=self.run_id, state=self.control.run_state, passed=False, reason=reason)
            log.info(
                "agent.claimed",
                run=self.run_id,
                profile=claim.profile,
                stages=[s.name for s in claim.stages],
                non_destructive=claim.non_destructive,
            )
            opts.spool_dir.mkdir(parents=True, exist_ok=True)
            spool = await Spool.open(opts.spool_dir / f"run-{self.run_id}.sqlite", max_batch_bytes=claim.max_batch_bytes)
            try:
                settled = await spool.sync_server(claim.log_seq, claim.sensor_seq, claim.log_seq_max, claim.sensor_seq_max)
                if settled:
                    log.info("agent.spool_resumed", settled=settled, pending=spool.pending)
                claimed = ClaimedRun(
                    self.registry, opts, self.control, client=client, claim=claim, spool=spool, ip=me["ip"],
                )
                return await claimed.run()
            finally:
                await spool.aclose()


class ClaimedRun:
    """One claimed run on this machine: the pipeline of planned stages, the failure and
    hold that may end it, and the tasks beside it (delivery, the buffer flusher, the
    sensor sidecar, the heartbeat). Owns the run's outbound buffer, sidecar, verdicts
    and hold; reads the orchestrator's commands from the :class:`ControlChannel`."""

    def __init__(
        self,
        registry: Registry,
        options: AgentOptions,
        control: ControlChannel,
        *,
        client: AgentClient,
        claim: ClaimReply,
        spool: Spool,
        ip: str | None,
    ) -> None:
        self.registry = registry
        self.options = options
        self.control = control
        self.client = client
        self.claim = claim
        self.spool = spool
        self.ip = ip
        self.run_id = control.run_id
        self.workdir = options.spool_dir / f"run-{self.run_id}-work"
        self.out = Outbound(
            spool,
            flush_interval_s=options.flush_interval_s,
            max_items=options.flush_max_items,
            on_progress=control.on_progress,
        )
        self.sidecar = SensorSidecar(
            self.out.measurement,
            sources=options.sidecar_sources if options.sidecar else [],
            interval_s=options.sensor_interval_s,
            ipmi_interval_s=options.ipmi_interval_s,
        )
        self.verdicts: dict[str, str] = {}
        self.hold_ssh: str | None = None
        self.conflict: str | None = None  # why the orchestrator refused a stage result

    def _agent_log(self, message: str, level: str = "info", stage: str | None = None) -> None:
        """A line in the run's log written by the agent itself (lifecycle, holds)."""
        self.out.log(LogLine(ts=utcnow(), stage=stage, level=level, message=message))

    async def run(self) -> Outcome:
        opts, control = self.options, self.control
        log.info("agent.sensors", sensors=self.sidecar.describe())
        passed = False
        reason: str | None = None
        with control.run_scope():
            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    deliver_loop, self.spool, self.client, control, Backoff(opts.backoff_initial_s, opts.backoff_cap_s)
                )
                tg.start_soon(self.out.flush_loop)
                tg.start_soon(
                    control.heartbeat_loop, self.client, self.claim.heartbeat_interval_s,
                    lambda: self.spool.pending + self.out.buffered,
                )
                tg.start_soon(self.sidecar.run)
                passed, reason = await self._pipeline()
                await self._finish(wait_for_end=passed)
                tg.cancel_scope.cancel()
        if control.fatal is not None:
            passed, reason = False, str(control.fatal)
        produced = await self.spool.produced()
        states = await self.spool.states()
        if control.ended == "shutdown" and opts.power_off:
            self._power_off()
        outcome = Outcome(
            run_id=self.run_id,
            state=control.run_state,
            passed=passed and control.fatal is None,
            reason=reason,
            verdicts=self.verdicts,
            produced=produced,
            rejected=states.get("rejected", 0),
            hold_ssh=self.hold_ssh,
        )
        log.info("agent.done", run=self.run_id, state=outcome.state, passed=outcome.passed, reason=reason,
                 produced=produced, pending=states.get("pending", 0), rejected=outcome.rejected)
        return outcome

    # -- pipeline -----------------------------------------------------------------------
    async def _pipeline(self) -> tuple[bool, str | None]:
        """Run the planned agent stages in order, or where the orchestrator's reply
        points; return ``(passed, reason)``. The control channel can stop it, queue a
        retry (an operator's override) or say the run failed on the server."""
        control = self.control
        stages = sorted(self.claim.stages, key=lambda s: s.ordinal)
        index = {s.name: i for i, s in enumerate(stages)}
        state = {s.name: s.state for s in stages}
        self.verdicts = {s.name: s.state.value for s in stages if s.state.terminal}
        inventory = await self._inventory(state)
        resumed = await self._settle_queued_results(state)
        if resumed is not None:
            return resumed
        override: dict[str, Any] = dict(self.claim.override_flags)
        i = 0
        while True:
            if (stop := control.stop_reason()) is not None:
                return False, stop
            if control.server_failed and not control.retries:
                outcome = await self._after_failure(None)
                if outcome is None:
                    continue
                return outcome
            if (retry := control.take_retry()) is not None:
                if retry.stage not in index:
                    log.error("agent.retry_unknown_stage", stage=retry.stage)
                    continue
                i = index[retry.stage]
                override.update(retry.flags)
                state[retry.stage] = Verdict.pending
            if i >= len(stages):
                return self._pipeline_ok(), None
            planned = stages[i]
            if planned.runs_on == "orchestrator" or state[planned.name].terminal:
                i += 1
                continue
            reply, produced_inventory = await self._run_stage(planned, inventory, override)
            if reply is None:  # cancelled, or the orchestrator refused the result
                if control.retries:
                    continue
                if (stop := control.stop_reason()) is not None:
                    return False, stop
                if control.server_failed or control.run_state in FAILED:
                    control.server_failed = True
                    continue  # the top of the loop asks for a hold
                return False, self.conflict or f"stage {planned.name} was interrupted"
            state[planned.name] = reply.verdict
            self.verdicts[planned.name] = reply.verdict.value
            if produced_inventory:
                inventory = produced_inventory
                await self.spool.set_value("inventory", inventory)
            control.run_state = reply.next_state
            if _run_failed(reply):
                outcome = await self._after_failure(reply)
                if outcome is None:  # an operator override re-entered a stage
                    continue
                return outcome
            if reply.next_stage and reply.next_stage in index:
                i = index[reply.next_stage]
            elif reply.next_state != RunState.Running:
                return self._pipeline_ok(), None
            else:
                i += 1

    async def _inventory(self, state: dict[str, Verdict]) -> dict[str, Any]:
        """The inventory document later stages decide on: the spool's copy, or collected
        again when InventoryCheck finished in an earlier boot (the spool was on tmpfs)."""
        inventory: dict[str, Any] = await self.spool.get_value("inventory") or {}
        if not inventory and state.get(INVENTORY_STAGE, Verdict.pending).terminal:
            inventory = await collect_inventory(self.registry, self.workdir)
            await self.spool.set_value("inventory", inventory)
        return inventory

    async def _settle_queued_results(self, state: dict[str, Verdict]) -> tuple[bool, str | None] | None:
        """Results a previous agent process queued but never saw answered: wait for
        their answers. Returns the pipeline's outcome when one of them ended it."""
        for entry in await self.spool.results():
            if entry.state == "pending":
                reply = await self._await_result(entry.id)
                if reply is None:
                    return False, (str(self.control.fatal) if self.control.fatal else None) or self.conflict
                state[reply.stage] = reply.verdict
                self.verdicts[reply.stage] = reply.verdict.value
                if _run_failed(reply):
                    # the pipeline ends here even when an override re-entered a stage
                    return await self._after_failure(reply) or (False, failure_reason(reply))
        return None

    async def _run_stage(
        self, planned: PlannedStage, inventory: dict[str, Any], override: dict[str, Any]
    ) -> tuple[ResultReply | None, dict[str, Any] | None]:
        """Run one stage, queue its result, wait for the orchestrator's answer. Returns
        the answer (None: interrupted, or the result was refused) and the inventory
        the stage produced."""
        claim, control = self.claim, self.control
        non_destructive = claim.non_destructive or self.options.non_destructive_only
        log.info("stage.start", stage=planned.name, ordinal=planned.ordinal)
        self._agent_log(f"agent: stage {planned.name} starting", stage=planned.name)
        control.stage_started(planned.name)
        if self.options.non_destructive_only and planned.destructive:
            now = utcnow()
            result = StageResult(
                stage=planned.name,
                verdict=Verdict.failed,
                reason="this agent runs in host mode and never runs destructive stages",
                started_at=now,
                completed_at=now,
            )
        else:
            ctx = build_context(
                planned.name,
                registry=self.registry,
                params=planned.params,
                sink=self.out,
                workdir=stage_workdir(self.workdir, planned.name, planned.ordinal),
                profile=claim.profile,
                run_id=self.run_id,
                inventory=inventory,
                spec=claim.expected_spec,
                non_destructive=non_destructive,
                override_flags=override,
                thresholds=claim.thresholds,
                peers=orchestrator_peers(
                    self.client, planned.name, wait_s=self.options.peer_wait_s,
                    backoff=Backoff(self.options.backoff_initial_s, self.options.backoff_cap_s),
                ),
            )
            self.sidecar.stage = planned.name
            result = None
            with control.stage_scope() as scope:
                result = await run_planned(self.registry, planned, ctx)
            self.sidecar.stage = None
            if result is None or scope.cancelled_caught:
                self._agent_log(f"agent: stage {planned.name} interrupted", level="warning", stage=planned.name)
                await self.out.flush()
                control.current_stage = None
                return None, None
        log.info("stage.done", stage=planned.name, verdict=result.verdict.value, reason=result.reason)
        await self.out.flush()
        entry_id = await self.spool.append_result(result, await read_uploads(result.artifacts, claim.max_artifact_bytes))
        reply = await self._await_result(entry_id)
        control.current_stage = None
        control.answered(planned.name)
        if reply is not None:
            if reply.verdict is not result.verdict:
                log.warning("stage.verdict_changed", stage=planned.name, agent=result.verdict.value,
                            orchestrator=reply.verdict.value, reason=reply.reason,
                            breaches=len(reply.breaches))
        return reply, result.inventory

    async def _await_result(self, entry_id: int) -> ResultReply | None:
        try:
            entry = await self.spool.wait_settled(entry_id)
        except SpoolRejected as exc:
            # 409: the run is no longer Running (failed meanwhile, e.g. AgentLost) or the
            # orchestrator already holds a different result: never retried, surfaced
            self.conflict = f"the orchestrator refused the stage result: {exc.entry.error}"
            log.error("stage.result_refused", run=self.run_id, error=exc.entry.error)
            self._agent_log(f"agent: {self.conflict}", level="error")
            return None
        return decode_result_reply(entry.reply or b"")

    def _pipeline_ok(self) -> bool:
        """Nothing failed (a stage that could not run in host mode let the run go on)."""
        return all(v in ("passed", "skipped", "cannot_run") for v in self.verdicts.values())

    # -- failure and hold ---------------------------------------------------------------
    async def _after_failure(self, reply: ResultReply | None) -> tuple[bool, str | None] | None:
        """The run failed (a stage's verdict, a hold request, or the orchestrator gave up
        on us). Ask for a hold and keep it while it lasts. Returns the pipeline's
        outcome, or None when an operator's override re-entered a stage
        (``retry_stage``) meanwhile."""
        reason = failure_reason(reply)
        await self.out.flush()
        await self._hold(reply, reason)
        return None if self.control.retries else (False, reason)

    async def _hold(self, reply: ResultReply | None, reason: str) -> None:
        """Ask for a hold, install the operator's key and wait until an override or a
        release; returns at once when the orchestrator wants no hold."""
        control = self.control
        # the orchestrator says whether to hold (hold.enabled, not a host-mode run); when
        # it failed the run without our result (AgentLost) we ask and it may refuse
        if not self.options.allow_hold or (reply is not None and not reply.hold):
            log.info("agent.run_failed", run=self.run_id, reason=reason)
            return
        try:
            hold = await _retrying(
                "hold",
                lambda: self.client.hold(HoldRequest(ip=self.options.hold_ip or self.ip or "", reason=reason)),
                self.options,
            )
        except Rejected as exc:  # hold disabled on the server, or the run is past it
            log.info("agent.no_hold", run=self.run_id, reason=str(exc))
            return
        except (AuthRejected, TimeoutError) as exc:
            log.error("agent.hold_failed", run=self.run_id, error=str(exc))
            return
        line = install_key(self.options.authorized_keys, hold.authorized_key, hold.expires_at, self.run_id)
        ip = self.options.hold_ip or self.ip or "<this host>"
        self.hold_ssh = hold.ssh_command or f"ssh {hold.user}@{ip}"
        control.holding = True
        control.run_state = RunState.FailedHolding.value
        self._agent_log(
            f"agent: holding for inspection until {hold.expires_at.isoformat()}: {self.hold_ssh}", level="warning"
        )
        log.warning("agent.holding", run=self.run_id, ssh=self.hold_ssh, expires=hold.expires_at.isoformat(),
                    authorized_keys=str(self.options.authorized_keys), key_line=line[:60] + "…")
        print(f"HOLD: run {self.run_id} failed ({reason}); inspect with: {self.hold_ssh}", flush=True)
        await control.wait_while_held()
        control.holding = False
        if control.retries:
            control.server_failed = False

    async def _finish(self, *, wait_for_end: bool) -> None:
        """Deliver what is left; after a passed pipeline, wait for the orchestrator's last
        word (``shutdown`` once the run is Completed)."""
        control = self.control
        control.current_stage = None
        self.sidecar.stage = None
        await self.out.flush()
        if control.fatal is None and control.ended != "abort":
            with anyio.move_on_after(self.options.drain_timeout_s) as scope:
                await self.spool.wait_drained()
            if scope.cancelled_caught:
                log.error("spool.not_drained", pending=self.spool.pending)
        if wait_for_end and control.fatal is None and control.ended is None:
            with anyio.move_on_after(self.options.final_wait_s):
                await control.wait_for_end()

    def _power_off(self) -> None:
        argv = list(self.options.poweroff_argv)
        log.warning("agent.power_off", argv=argv)
        try:
            subprocess.run(argv, stdin=subprocess.DEVNULL, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.error("agent.power_off_failed", error=str(exc))


def failure_reason(reply: ResultReply | None) -> str:
    """Why the run failed, naming the stage that failed it: the reply's own stage, or an
    orchestrator-owned stage run right after it (InventoryCheck passed, SpecValidate
    failed: the reply is InventoryCheck's, the failure SpecValidate's)."""
    if reply is None:
        return "the orchestrator failed the run"
    stage = reply.failed_stage or reply.stage
    why = reply.run_reason or (reply.reason if stage == reply.stage else None) or f"stage {stage} {reply.verdict.label}"
    return why if why.startswith(stage) or f"stage {stage}" in why else f"{stage}: {why}"


async def run_connected(
    coords: RunCoordinates,
    registry: Registry,
    options: AgentOptions | None = None,
    *,
    mode: Mode = "connect",
) -> Outcome:
    """Drive one run to its end. Errors that retrying cannot fix end it with a reason."""
    session = RunSession(coords, registry, options, mode=mode)
    return await session.run()


__all__ = ["AgentFatal", "AgentOptions", "ClaimedRun", "ClientError", "Outcome", "RunSession", "run_connected"]
