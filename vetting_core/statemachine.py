"""The run state machine: one table, ``(state, event) -> (next state, action, notify)``.

Pure: no I/O. The server applies a transition with compare-and-set in the database
(``UPDATE runs SET state = :next WHERE id = :id AND state = :expected``) so two
replicas, or a retried request, can never advance a run twice.

Stages are not states. The seed had one state per built-in stage; here the pipeline
comes from the installed plugins and the profile, so a run is ``Running`` with a
``current_stage`` cursor, and a third-party stage slots in without touching this file.
``WaitingBoot`` is the seed's ``WaitingWoL`` generalised to any boot provider.

Lifecycle::

    Registered → Queued → WaitingBoot → Booting → Running (stage after stage)
        → Reporting → Completed
    Running → Failed → FailedHolding → Released      (override: FailedHolding → Running)
    Registered … Reporting → Cancelled   (a failed run is released, not cancelled)
"""

from __future__ import annotations

import enum
from typing import NamedTuple

from .events import RunEventKind


class RunState(str, enum.Enum):
    Registered = "Registered"
    Queued = "Queued"
    WaitingBoot = "WaitingBoot"
    Booting = "Booting"
    Running = "Running"
    Reporting = "Reporting"
    Completed = "Completed"
    Failed = "Failed"
    FailedHolding = "FailedHolding"
    Released = "Released"
    Cancelled = "Cancelled"


class RunEventType(str, enum.Enum):
    """What happened to a run (inputs of the state machine)."""

    enqueue = "enqueue"  # operator started the run
    dispatch = "dispatch"  # dispatcher picked it under the concurrency limit
    boot_requested = "boot_requested"  # boot provider accepted the power-on
    boot_failed = "boot_failed"
    hello = "hello"  # agent booted and said hello
    claim = "claim"  # agent claimed the run and got its stage list
    stage_passed = "stage_passed"  # a stage passed or was skipped, more stages follow
    pipeline_done = "pipeline_done"  # the last stage passed
    report_done = "report_done"
    stage_failed = "stage_failed"
    spec_mismatch = "spec_mismatch"
    hold_opened = "hold_opened"  # agent asked for a hold (seed: POST /hold)
    override = "override"  # operator overrides the wipe probe: retry the held stage
    release = "release"  # operator releases the host
    cancel = "cancel"
    agent_lost = "agent_lost"  # heartbeat timeout
    timeout = "timeout"  # boot or stage timeout


class Action(str, enum.Enum):
    """Side effect the server performs after a successful compare-and-set."""

    none = "none"
    power_on = "power_on"
    record_agent = "record_agent"
    seed_stages = "seed_stages"
    resume = "resume"
    advance = "advance"
    build_report = "build_report"
    finish = "finish"
    retry_stage = "retry_stage"
    open_hold = "open_hold"
    close = "close"


class Transition(NamedTuple):
    next: RunState
    action: Action
    notify: RunEventKind | None = None


class InvalidTransition(Exception):
    def __init__(self, state: RunState, event: RunEventType) -> None:
        super().__init__(f"run in state {state.value} cannot take event {event.value!r}")
        self.state = state
        self.event = event


S, E, A, K = RunState, RunEventType, Action, RunEventKind

TERMINAL = frozenset({S.Completed, S.Released, S.Cancelled})
"""No event leaves these states; the run's agent token is dead."""

AGENT_ACTIVE = frozenset(
    {S.Queued, S.WaitingBoot, S.Booting, S.Running, S.Reporting, S.Failed, S.FailedHolding}
)
"""States in which the run's agent token is accepted."""

_CANCELLABLE = (S.Registered, S.Queued, S.WaitingBoot, S.Booting, S.Running, S.Reporting)

TABLE: dict[tuple[RunState, RunEventType], Transition] = {
    (S.Registered, E.enqueue): Transition(S.Queued, A.none),
    (S.Queued, E.dispatch): Transition(S.WaitingBoot, A.power_on),
    (S.WaitingBoot, E.boot_requested): Transition(S.Booting, A.none),
    (S.WaitingBoot, E.boot_failed): Transition(S.Failed, A.finish, K.RunFailed),
    (S.WaitingBoot, E.timeout): Transition(S.Failed, A.finish, K.RunFailed),
    (S.Booting, E.timeout): Transition(S.Failed, A.finish, K.RunFailed),
    # an agent started by hand (connect mode, manual boot) may say hello before dispatch
    (S.Queued, E.hello): Transition(S.Booting, A.record_agent),
    (S.WaitingBoot, E.hello): Transition(S.Booting, A.record_agent),
    (S.Booting, E.hello): Transition(S.Booting, A.record_agent),
    (S.Running, E.hello): Transition(S.Running, A.record_agent),  # agent restarted
    (S.Booting, E.claim): Transition(S.Running, A.seed_stages),
    (S.Running, E.claim): Transition(S.Running, A.resume),
    (S.Running, E.stage_passed): Transition(S.Running, A.advance),
    (S.Running, E.pipeline_done): Transition(S.Reporting, A.build_report),
    (S.Reporting, E.report_done): Transition(S.Completed, A.finish, K.RunCompleted),
    (S.Running, E.stage_failed): Transition(S.Failed, A.finish, K.StageFailed),
    (S.Running, E.spec_mismatch): Transition(S.Failed, A.finish, K.SpecMismatch),
    (S.Running, E.timeout): Transition(S.Failed, A.finish, K.RunFailed),
    (S.Booting, E.agent_lost): Transition(S.Failed, A.finish, K.AgentLost),
    (S.Running, E.agent_lost): Transition(S.Failed, A.finish, K.AgentLost),
    (S.Failed, E.hold_opened): Transition(S.FailedHolding, A.open_hold, K.HoldingOpened),
    (S.FailedHolding, E.hold_opened): Transition(S.FailedHolding, A.open_hold),  # re-issue key
    (S.FailedHolding, E.override): Transition(S.Running, A.retry_stage),
    (S.Failed, E.release): Transition(S.Released, A.close),
    (S.FailedHolding, E.release): Transition(S.Released, A.close),
    **{(s, E.cancel): Transition(S.Cancelled, A.close) for s in _CANCELLABLE},
}


def transition(state: RunState | str, event: RunEventType | str) -> Transition:
    """The transition for ``(state, event)``; raises :class:`InvalidTransition`."""
    state, event = RunState(state), RunEventType(event)
    try:
        return TABLE[(state, event)]
    except KeyError:
        raise InvalidTransition(state, event) from None


def allowed_events(state: RunState | str) -> list[RunEventType]:
    state = RunState(state)
    return [e for (s, e) in TABLE if s is state]


class Command(str, enum.Enum):
    """The heartbeat control channel (seed: ``cmd`` in the heartbeat response)."""

    continue_ = "continue"
    shutdown = "shutdown"
    abort = "abort"
    retry_stage = "retry_stage"


def heartbeat_command(state: RunState | str, *, retry_pending: bool = False) -> Command:
    """What the agent should do, given the run's state.

    Unlike the seed, a run in ``FailedHolding`` answers ``continue``: the agent keeps
    heartbeating during a hold so that an operator's override (``retry_stage``) reaches it.
    """
    state = RunState(state)
    if retry_pending and state not in TERMINAL:
        # a retry armed before the run was cancelled or released must not restart it
        return Command.retry_stage
    if state is S.Completed:
        return Command.shutdown
    if state in (S.Released, S.Cancelled):
        return Command.abort
    return Command.continue_
