"""One run driven by the orchestrator: the connected flow of ``pxe``, ``connect`` and
``host`` modes.

``hello`` → ``claim`` → for each planned agent stage (in order, or where the
orchestrator's ``next_stage`` points): run it, stream its lines and samples through
the spool, queue its result behind them, wait for the orchestrator's verdict, act on
it (next stage, hold, stop). Beside the pipeline, in one task group: the spool
deliverer, the buffer flusher, the sensor sidecar and the heartbeat loop, whose reply
carries the control channel (``continue``, ``shutdown``, ``abort``, ``retry_stage``).

Orchestrator-owned stages (SpecValidate) are the server's business in these modes:
it resolves them inside ``/result``; the agent skips them. A stage keeps running while
the orchestrator is unreachable; only the step *after* a stage waits for its verdict.
"""

from __future__ import annotations

import contextlib
import subprocess
from dataclasses import dataclass, field
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
    Heartbeat,
    HeartbeatReply,
    Hello,
    HoldRequest,
    LogLine,
    PlannedStage,
    ResultReply,
    StageResult,
)
from vetting_core.context import build_context, stage_workdir, utcnow
from vetting_core.statemachine import ENDED, FAILED, RunState

from . import AGENT_VERSION
from .backoff import Backoff, jittered
from .client import AgentClient, AuthRejected, ClientError, Rejected, Unreachable, decode_ack, decode_result_reply
from .cmdline import RunCoordinates
from .execution import run_planned
from .peers import orchestrator_peers
from .uploads import read_uploads
from .hold import DEFAULT_AUTHORIZED_KEYS, install_key
from .inventory import INVENTORY_STAGE
from .inventory import collect as collect_inventory
from .netinfo import describe_self
from .outbound import Outbound
from .sidecar import SensorSidecar
from .spool import KIND_LOG, KIND_SENSOR, Spool, SpoolRejected

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


class AgentFatal(Exception):
    """The run cannot go on (bad token, run gone, conflict on a result)."""


@dataclass
class _Retry:
    stage: str
    flags: dict[str, Any] = field(default_factory=dict)


class RunSession:
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
        self.run_state = "unknown"
        self.current_stage: str | None = None
        self.progress: float | None = None
        self.message = ""
        self.retries: list[_Retry] = []
        self.ended: str | None = None  # "shutdown" | "abort" from the control channel
        self.server_failed = False
        self.fatal: BaseException | None = None
        self.hold_ssh: str | None = None
        self.holding = False
        self.verdicts: dict[str, str] = {}
        self._wake = anyio.Event()
        self._stage_scope: anyio.CancelScope | None = None
        self._main_scope: anyio.CancelScope | None = None
        self._heartbeat_ok = anyio.Event()
        self.ip: str | None = None
        self._last_inventory: dict[str, Any] | None = None
        self.conflict: str | None = None
        self._answered_at: dict[str, float] = {}  # stage -> when its last result was answered

    # -- small helpers --------------------------------------------------------------
    def _poke(self) -> None:
        self._wake.set()
        self._wake = anyio.Event()

    def _agent_log(self, message: str, level: str = "info", stage: str | None = None) -> None:
        """A line in the run's log written by the agent itself (lifecycle, holds)."""
        self.out.log(LogLine(ts=utcnow(), stage=stage, level=level, message=message))

    def _on_progress(self, stage: str, fraction: float | None, message: str) -> None:
        # the server takes 0..1 (a heartbeat with more is refused): a stage's rounding stays in range
        self.progress = None if fraction is None or fraction != fraction else min(max(float(fraction), 0.0), 1.0)
        self.message = message

    def _die(self, exc: BaseException) -> None:
        if self.fatal is None:
            self.fatal = exc
            log.error("agent.fatal", run=self.run_id, error=str(exc))
        if self._main_scope is not None:
            self._main_scope.cancel()

    async def _retrying(self, what: str, call: Any) -> Any:
        """Call until it answers, with backoff, for at most ``startup_timeout_s``."""
        backoff = Backoff(self.options.backoff_initial_s, self.options.backoff_cap_s)
        with anyio.fail_after(self.options.startup_timeout_s):
            while True:
                try:
                    return await call()
                except Unreachable as exc:
                    delay = backoff.next()
                    log.warning("agent.unreachable", call=what, error=str(exc), retry_in=round(delay, 2))
                    await anyio.sleep(delay)

    # -- the run ----------------------------------------------------------------------
    async def run(self) -> Outcome:
        opts = self.options
        async with AgentClient(
            self.coords.server,
            self.coords.token,
            run_id=self.run_id,
            timeout=opts.http_timeout_s,
            transport=opts.transport,
        ) as client:
            self.client = client
            me = describe_self(self.coords.server)
            self.ip = me["ip"]
            hello = Hello(
                agent_version=AGENT_VERSION,
                hostname=me["hostname"] or "",
                ip=me["ip"],
                mac=me["mac"],
                boot_id=me["boot_id"] or "",
                mode=self.mode,
            )
            try:
                reply = await self._retrying("hello", lambda: client.hello(hello))
                self.run_state = reply.state
                claim = await self._retrying(
                    "claim",
                    lambda: client.claim(
                        Claim(
                            agent_version=AGENT_VERSION,
                            hostname=hello.hostname,
                            stages_installed=sorted(self.registry.stages),
                        )
                    ),
                )
            except (AuthRejected, Rejected) as exc:
                log.error("agent.refused", run=self.run_id, error=str(exc))
                return Outcome(run_id=self.run_id, state=self.run_state, passed=False, reason=str(exc))
            except TimeoutError:
                reason = f"orchestrator {self.coords.server} unreachable for {opts.startup_timeout_s:.0f}s"
                log.error("agent.gave_up", run=self.run_id, reason=reason)
                return Outcome(run_id=self.run_id, state=self.run_state, passed=False, reason=reason)
            log.info(
                "agent.claimed",
                run=self.run_id,
                profile=claim.profile,
                stages=[s.name for s in claim.stages],
                non_destructive=claim.non_destructive,
            )
            self.claim = claim
            opts.spool_dir.mkdir(parents=True, exist_ok=True)
            self.spool = await Spool.open(
                opts.spool_dir / f"run-{self.run_id}.sqlite", max_batch_bytes=claim.max_batch_bytes
            )
            try:
                settled = await self.spool.sync_server(claim.log_seq, claim.sensor_seq, claim.log_seq_max, claim.sensor_seq_max)
                if settled:
                    log.info("agent.spool_resumed", settled=settled, pending=self.spool.pending)
                return await self._run_claimed(claim)
            finally:
                await self.spool.aclose()

    async def _run_claimed(self, claim: ClaimReply) -> Outcome:
        opts = self.options
        self.out = Outbound(
            self.spool,
            flush_interval_s=opts.flush_interval_s,
            max_items=opts.flush_max_items,
            on_progress=self._on_progress,
        )
        self.sidecar = SensorSidecar(
            self.out.measurement,
            sources=opts.sidecar_sources if opts.sidecar else [],
            interval_s=opts.sensor_interval_s,
            ipmi_interval_s=opts.ipmi_interval_s,
        )
        log.info("agent.sensors", sensors=self.sidecar.describe())
        passed = False
        reason: str | None = None
        with anyio.CancelScope() as main:
            self._main_scope = main
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._deliver_loop)
                tg.start_soon(self.out.flush_loop)
                tg.start_soon(self._heartbeat_loop, claim.heartbeat_interval_s)
                tg.start_soon(self.sidecar.run)
                passed, reason = await self._pipeline(claim)
                await self._finish(wait_for_end=passed)
                tg.cancel_scope.cancel()
        if self.fatal is not None:
            passed, reason = False, str(self.fatal)
        produced = await self.spool.produced()
        states = await self.spool.states()
        if self.ended == "shutdown" and opts.power_off:
            self._power_off()
        outcome = Outcome(
            run_id=self.run_id,
            state=self.run_state,
            passed=passed and self.fatal is None,
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
    async def _pipeline(self, claim: ClaimReply) -> tuple[bool, str | None]:
        stages = sorted(claim.stages, key=lambda s: s.ordinal)
        index = {s.name: i for i, s in enumerate(stages)}
        state = {s.name: s.state for s in stages}
        self.verdicts = {s.name: s.state.value for s in stages if s.state.terminal}
        inventory: dict[str, Any] = await self.spool.get_value("inventory") or {}
        override: dict[str, Any] = dict(claim.override_flags)
        if not inventory and state.get(INVENTORY_STAGE, Verdict.pending).terminal:
            # InventoryCheck finished in an earlier boot (the spool was on tmpfs): later
            # stages still need the document to decide whether they apply
            inventory = await collect_inventory(self.registry, self.options.spool_dir / f"run-{self.run_id}-work")
            await self.spool.set_value("inventory", inventory)

        # results a previous agent process queued but never saw answered
        for entry in await self.spool.results():
            if entry.state == "pending":
                reply = await self._await_result(entry.id)
                if reply is None:
                    return False, self._reason_from_fatal() or self.conflict
                state[reply.stage] = reply.verdict
                self.verdicts[reply.stage] = reply.verdict.value
                if reply.verdict is Verdict.failed or reply.hold or reply.next_state in FAILED:
                    return await self._after_failure(reply)

        i = 0
        while True:
            if self.ended or self.fatal:
                return False, self._reason_from_fatal() or f"run ended by the orchestrator ({self.ended})"
            if self.server_failed and not self.retries:
                outcome = await self._after_failure(None)
                if self.retries:
                    continue
                return outcome
            if self.retries:
                retry = self.retries.pop(0)
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
            reply = await self._run_stage(planned, claim, inventory, override)
            if reply is None:  # cancelled, or the orchestrator refused the result
                if self.retries:
                    continue
                if self.ended or self.fatal:
                    return False, self._reason_from_fatal() or f"run ended by the orchestrator ({self.ended})"
                if self.server_failed or self.run_state in FAILED:
                    self.server_failed = True
                    continue  # the top of the loop asks for a hold
                return False, self.conflict or f"stage {planned.name} was interrupted"
            state[planned.name] = reply.verdict
            self.verdicts[planned.name] = reply.verdict.value
            if result_inventory := self._last_inventory:
                inventory = result_inventory
                await self.spool.set_value("inventory", inventory)
            self.run_state = reply.next_state
            if reply.hold or reply.verdict is Verdict.hold or reply.next_state in FAILED or reply.verdict is Verdict.failed:
                outcome = await self._after_failure(reply)
                if self.retries:  # an operator override re-entered a stage
                    continue
                return outcome
            if reply.next_stage and reply.next_stage in index:
                i = index[reply.next_stage]
            elif reply.next_state != RunState.Running:
                return self._pipeline_ok(), None
            else:
                i += 1

    async def _run_stage(
        self, planned: PlannedStage, claim: ClaimReply, inventory: dict[str, Any], override: dict[str, Any]
    ) -> ResultReply | None:
        self._last_inventory = None
        non_destructive = claim.non_destructive or self.options.non_destructive_only
        log.info("stage.start", stage=planned.name, ordinal=planned.ordinal)
        self._agent_log(f"agent: stage {planned.name} starting", stage=planned.name)
        self.current_stage, self.progress, self.message = planned.name, 0.0, ""
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
                workdir=stage_workdir(self.options.spool_dir / f"run-{self.run_id}-work", planned.name, planned.ordinal),
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
            with anyio.CancelScope() as scope:
                self._stage_scope = scope
                result = await run_planned(self.registry, planned, ctx)
            self._stage_scope = None
            self.sidecar.stage = None
            if result is None or scope.cancelled_caught:
                self._agent_log(f"agent: stage {planned.name} interrupted", level="warning", stage=planned.name)
                await self.out.flush()
                self.current_stage = None
                return None
        self._last_inventory = result.inventory
        log.info("stage.done", stage=planned.name, verdict=result.verdict.value, reason=result.reason)
        await self.out.flush()
        entry_id = await self.spool.append_result(result, await read_uploads(result.artifacts, claim.max_artifact_bytes))
        reply = await self._await_result(entry_id)
        self.current_stage = None
        self._answered_at[planned.name] = anyio.current_time()
        if reply is not None:
            if reply.verdict is not result.verdict:
                log.warning("stage.verdict_changed", stage=planned.name, agent=result.verdict.value,
                            orchestrator=reply.verdict.value, reason=reply.reason,
                            breaches=len(reply.breaches))
        return reply

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

    def _reason_from_fatal(self) -> str | None:
        return str(self.fatal) if self.fatal else None

    # -- failure and hold ---------------------------------------------------------------
    async def _after_failure(self, reply: ResultReply | None) -> tuple[bool, str | None]:
        """The run failed (a stage's verdict, a hold request, or the orchestrator gave up
        on us). Ask for a hold; keep heartbeating while it lasts; an override re-enters a
        stage (``retry_stage``), a release ends the agent."""
        reason = failure_reason(reply)
        await self.out.flush()
        # the orchestrator says whether to hold (hold.enabled, not a host-mode run); when
        # it failed the run without our result (AgentLost) we ask and it may refuse
        if not self.options.allow_hold or (reply is not None and not reply.hold):
            log.info("agent.run_failed", run=self.run_id, reason=reason)
            return False, reason
        try:
            hold = await self._retrying(
                "hold", lambda: self.client.hold(HoldRequest(ip=self.options.hold_ip or self.ip or "", reason=reason))
            )
        except Rejected as exc:  # hold disabled on the server, or the run is past it
            log.info("agent.no_hold", run=self.run_id, reason=str(exc))
            return False, reason
        except (AuthRejected, TimeoutError) as exc:
            log.error("agent.hold_failed", run=self.run_id, error=str(exc))
            return False, reason
        line = install_key(self.options.authorized_keys, hold.authorized_key, hold.expires_at, self.run_id)
        ip = self.options.hold_ip or self.ip or "<this host>"
        self.hold_ssh = hold.ssh_command or f"ssh {hold.user}@{ip}"
        self.holding = True
        self.run_state = RunState.FailedHolding.value
        self._agent_log(
            f"agent: holding for inspection until {hold.expires_at.isoformat()}: {self.hold_ssh}", level="warning"
        )
        log.warning("agent.holding", run=self.run_id, ssh=self.hold_ssh, expires=hold.expires_at.isoformat(),
                    authorized_keys=str(self.options.authorized_keys), key_line=line[:60] + "…")
        print(f"HOLD: run {self.run_id} failed ({reason}); inspect with: {self.hold_ssh}", flush=True)
        while not (self.retries or self.ended or self.fatal):
            await self._wake.wait()
        self.holding = False
        if self.retries:
            self.server_failed = False
            return False, reason
        return False, reason

    # -- background loops ---------------------------------------------------------------
    async def _deliver_loop(self) -> None:
        backoff = Backoff(self.options.backoff_initial_s, self.options.backoff_cap_s)
        failing_since: float | None = None
        while True:
            entry = await self.spool.next_pending()
            if entry is None:
                await self.spool.wait_changed(5.0)
                continue
            try:
                body = await self.client.post_raw(self.client.run_path(entry.kind), entry.body or b"")
            except Unreachable as exc:
                await self.spool.note_attempt(entry.id)
                delay = backoff.next()
                now = anyio.current_time()
                if failing_since is None:
                    failing_since = now
                    log.warning("spool.unreachable", error=str(exc), pending=self.spool.pending)
                await anyio.sleep(delay)
                continue
            except Rejected as exc:
                await self.spool.settle(entry.id, state="rejected", error=f"HTTP {exc.status}: {exc.detail}")
                log.error("spool.rejected", kind=entry.kind, seq=entry.seq, stage=entry.stage,
                          items=entry.items, status=exc.status, detail=exc.detail)
                continue
            except AuthRejected as exc:
                if not (self.ended or self.run_state in ENDED):
                    # a run that ended (cancelled, released) kills its token: the
                    # heartbeat, still accepted, says so and carries the command
                    with contextlib.suppress(ClientError):
                        self._handle(await self.client.heartbeat(Heartbeat(stage=self.current_stage)))
                if self.ended or self.run_state in ENDED:
                    log.warning("spool.run_ended", state=self.run_state, pending=self.spool.pending)
                    return
                self._die(AgentFatal(f"the orchestrator rejected this agent's token: {exc}"))
                return
            if failing_since is not None:
                log.info("spool.reconnected", after_s=round(anyio.current_time() - failing_since, 1),
                         pending=self.spool.pending)
                failing_since = None
            backoff.reset()
            if entry.kind in (KIND_LOG, KIND_SENSOR):
                with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                    ack = decode_ack(body)
                    if ack.seq != entry.seq:
                        log.warning("spool.ack_mismatch", kind=entry.kind, sent=entry.seq, acked=ack.seq)
            await self.spool.settle(entry.id, state="acked", reply=body)

    async def _heartbeat_loop(self, interval_s: float) -> None:
        failing = 0
        last_rtt: float | None = None  # sent with the next heartbeat (the server's latency histogram)
        while True:
            beat = Heartbeat(
                stage=self.current_stage,
                progress=self.progress,
                message=self.message[:500],
                spool_depth=self.spool.pending + self.out.buffered,
                last_rtt_s=last_rtt,
            )
            sent_at = anyio.current_time()
            last_rtt = None
            try:
                reply = await self.client.heartbeat(beat)
                last_rtt = round(anyio.current_time() - sent_at, 6)
            except Unreachable as exc:
                failing += 1
                if failing == 1 or failing % 10 == 0:
                    log.warning("heartbeat.unreachable", error=str(exc), missed=failing)
            except AuthRejected as exc:
                if self.ended or self.run_state in ENDED:
                    return
                self._die(AgentFatal(f"heartbeat refused: {exc}"))
                return
            except Rejected as exc:
                log.error("heartbeat.rejected", error=str(exc))
            else:
                if failing:
                    log.info("heartbeat.back", missed=failing)
                failing = 0
                self._handle(reply, sent_at)
            await anyio.sleep(jittered(interval_s, 0.1))

    def _handle(self, reply: HeartbeatReply, sent_at: float = float("inf")) -> None:
        if reply.state != self.run_state:
            self.run_state = reply.state
            self._poke()
        if reply.cmd == "continue":
            if reply.state in FAILED and not self.holding and not self.server_failed:
                # the orchestrator failed the run without our result (AgentLost, a timeout)
                self.server_failed = True
                log.warning("agent.run_failed_on_server", state=reply.state)
                if self._stage_scope is not None:
                    self._stage_scope.cancel()
                self._poke()
            return
        if reply.cmd in ("shutdown", "abort"):
            log.info("heartbeat.cmd", cmd=reply.cmd, state=reply.state)
            self.ended = reply.cmd
            if self._stage_scope is not None:
                self._stage_scope.cancel()
            self._poke()
            return
        if reply.cmd == "retry_stage" and reply.stage:
            if any(r.stage == reply.stage for r in self.retries) or (
                self.current_stage == reply.stage and not self.holding
            ):
                return  # already queued or running: the command repeats until it happens
            if sent_at < self._answered_at.get(reply.stage, float("-inf")):
                return  # asked before the retried stage's result was answered: stale
            log.info("heartbeat.retry_stage", stage=reply.stage, flags=reply.override_flags)
            self.retries.append(_Retry(reply.stage, dict(reply.override_flags)))
            self._poke()

    async def _finish(self, *, wait_for_end: bool) -> None:
        """Deliver what is left; after a passed pipeline, wait for the orchestrator's last
        word (``shutdown`` once the run is Completed)."""
        self.current_stage = None
        self.sidecar.stage = None
        await self.out.flush()
        if self.fatal is None and self.ended != "abort":
            with anyio.move_on_after(self.options.drain_timeout_s) as scope:
                await self.spool.wait_drained()
            if scope.cancelled_caught:
                log.error("spool.not_drained", pending=self.spool.pending)
        if wait_for_end and self.fatal is None and self.ended is None:
            with anyio.move_on_after(self.options.final_wait_s):
                while not self.ended and self.run_state not in ENDED and not self.fatal:
                    await self._wake.wait()

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


__all__ = ["AgentOptions", "ClientError", "Outcome", "RunSession", "run_connected"]
