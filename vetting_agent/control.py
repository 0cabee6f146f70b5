"""The control channel: what the orchestrator tells a running agent, and how the agent
reacts.

The orchestrator cannot call the agent; it answers the agent's heartbeat with a
command (``continue``, ``shutdown``, ``abort``, ``retry_stage``) and the run's state.
Everything that answer can change lives in one :class:`ControlChannel`: the run state
as last heard, the end command, queued stage retries, whether the orchestrator failed
the run without the agent's result, and a fatal error (a refused token). Changes wake
whoever waits (:meth:`ControlChannel.changed`); ``shutdown``/``abort`` and a failure
on the server cancel the running stage; a fatal error cancels the whole run. The
pipeline reads the channel; only the heartbeat loop, the deliverer (a refused token)
and the hold (entering and leaving it) write it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import structlog

from vetting_core.protocol import Heartbeat, HeartbeatReply
from vetting_core.statemachine import ENDED, FAILED

from .backoff import jittered
from .client import AgentClient, AuthRejected, Rejected, Unreachable

log = structlog.get_logger()


class AgentFatal(Exception):
    """The run cannot go on (bad token, run gone, conflict on a result)."""


@dataclass
class Retry:
    """An operator's ``retry_stage``: re-enter ``stage`` with these override flags."""

    stage: str
    flags: dict[str, Any] = field(default_factory=dict)


class ControlChannel:
    """The agent's view of the orchestrator's commands for one run (see the module
    docstring), plus the status the next heartbeat reports (stage, progress, message)."""

    def __init__(self, run_id: int) -> None:
        self.run_id = run_id
        self.run_state = "unknown"  # the run's state as the orchestrator last said it
        self.ended: str | None = None  # "shutdown" | "abort" from the control channel
        self.server_failed = False  # the orchestrator failed the run without our result
        self.fatal: BaseException | None = None
        self.holding = False
        self.retries: list[Retry] = []
        # what the next heartbeat reports
        self.current_stage: str | None = None
        self.progress: float | None = None
        self.message = ""
        self._wake = anyio.Event()
        self._stage_scope: anyio.CancelScope | None = None
        self._run_scope: anyio.CancelScope | None = None
        self._answered_at: dict[str, float] = {}  # stage -> when its last result was answered

    # -- waking and stopping --------------------------------------------------------
    def poke(self) -> None:
        """Wake everyone waiting in :meth:`changed`."""
        self._wake.set()
        self._wake = anyio.Event()

    async def changed(self) -> None:
        """Wait until the channel changes (a state, a command, a retry, a death)."""
        await self._wake.wait()

    def die(self, exc: BaseException) -> None:
        """End the run with this error (the first one wins)."""
        if self.fatal is None:
            self.fatal = exc
            log.error("agent.fatal", run=self.run_id, error=str(exc))
        if self._run_scope is not None:
            self._run_scope.cancel()

    def run_scope(self) -> anyio.CancelScope:
        """The scope of the whole run, cancelled by :meth:`die`."""
        self._run_scope = anyio.CancelScope()
        return self._run_scope

    @contextlib.contextmanager
    def stage_scope(self) -> Iterator[anyio.CancelScope]:
        """The scope of the running stage, cancelled by ``shutdown``/``abort`` and by a
        failure on the server."""
        with anyio.CancelScope() as scope:
            self._stage_scope = scope
            try:
                yield scope
            finally:
                self._stage_scope = None

    def _cancel_stage(self) -> None:
        if self._stage_scope is not None:
            self._stage_scope.cancel()

    # -- what the pipeline asks -------------------------------------------------------
    @property
    def run_ended(self) -> bool:
        """The orchestrator ended the run (a command, or a state no event leaves)."""
        return bool(self.ended) or self.run_state in ENDED

    def stop_reason(self) -> str | None:
        """Why the pipeline must stop now (the run was ended or the agent died), else None."""
        if self.ended or self.fatal:
            return (str(self.fatal) if self.fatal else None) or f"run ended by the orchestrator ({self.ended})"
        return None

    def take_retry(self) -> Retry | None:
        return self.retries.pop(0) if self.retries else None

    async def wait_while_held(self) -> None:
        """During a hold: until an override queues a retry, or the run ends."""
        while not (self.retries or self.ended or self.fatal):
            await self.changed()

    async def wait_for_end(self) -> None:
        """After a passed pipeline: until the orchestrator ends the run."""
        while not self.ended and self.run_state not in ENDED and not self.fatal:
            await self.changed()

    # -- status for the heartbeat ----------------------------------------------------------
    def stage_started(self, stage: str) -> None:
        self.current_stage, self.progress, self.message = stage, 0.0, ""

    def on_progress(self, stage: str, fraction: float | None, message: str) -> None:
        # the server takes 0..1 (a heartbeat with more is refused): a stage's rounding stays in range
        self.progress = None if fraction is None or fraction != fraction else min(max(float(fraction), 0.0), 1.0)
        self.message = message

    def answered(self, stage: str) -> None:
        """The orchestrator answered ``stage``'s result: a retry asked before now is stale."""
        self._answered_at[stage] = anyio.current_time()

    # -- the heartbeat ----------------------------------------------------------------------
    async def heartbeat_loop(self, client: AgentClient, interval_s: float, depth: Callable[[], int]) -> None:
        """Report status every ``interval_s`` and apply each reply; ``depth()`` is what
        the agent still has to deliver."""
        failing = 0
        last_rtt: float | None = None  # sent with the next heartbeat (the server's latency histogram)
        while True:
            beat = Heartbeat(
                stage=self.current_stage,
                progress=self.progress,
                message=self.message[:500],
                spool_depth=depth(),
                last_rtt_s=last_rtt,
            )
            sent_at = anyio.current_time()
            last_rtt = None
            try:
                reply = await client.heartbeat(beat)
                last_rtt = round(anyio.current_time() - sent_at, 6)
            except Unreachable as exc:
                failing += 1
                if failing == 1 or failing % 10 == 0:
                    log.warning("heartbeat.unreachable", error=str(exc), missed=failing)
            except AuthRejected as exc:
                if self.run_ended:
                    return
                self.die(AgentFatal(f"heartbeat refused: {exc}"))
                return
            except Rejected as exc:
                log.error("heartbeat.rejected", error=str(exc))
            else:
                if failing:
                    log.info("heartbeat.back", missed=failing)
                failing = 0
                self.handle(reply, sent_at)
            await anyio.sleep(jittered(interval_s, 0.1))

    def handle(self, reply: HeartbeatReply, sent_at: float = float("inf")) -> None:
        """Apply one heartbeat reply (``sent_at``: when its heartbeat left)."""
        if reply.state != self.run_state:
            self.run_state = reply.state
            self.poke()
        if reply.cmd == "continue":
            if reply.state in FAILED and not self.holding and not self.server_failed:
                # the orchestrator failed the run without our result (AgentLost, a timeout)
                self.server_failed = True
                log.warning("agent.run_failed_on_server", state=reply.state)
                self._cancel_stage()
                self.poke()
            return
        if reply.cmd in ("shutdown", "abort"):
            log.info("heartbeat.cmd", cmd=reply.cmd, state=reply.state)
            self.ended = reply.cmd
            self._cancel_stage()
            self.poke()
            return
        if reply.cmd == "retry_stage" and reply.stage:
            if any(r.stage == reply.stage for r in self.retries) or (
                self.current_stage == reply.stage and not self.holding
            ):
                return  # already queued or running: the command repeats until it happens
            if sent_at < self._answered_at.get(reply.stage, float("-inf")):
                return  # asked before the retried stage's result was answered: stale
            log.info("heartbeat.retry_stage", stage=reply.stage, flags=reply.override_flags)
            self.retries.append(Retry(reply.stage, dict(reply.override_flags)))
            self.poke()
