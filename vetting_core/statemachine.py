"""The run state machine: one table, ``(state, event) -> (next state, notify)``.

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

The table says *where* a run may go and which notification that raises; it does not
say what else happens. The effects live with the code that owns the data: the server's
run service applies a transition (compare-and-set, then what the *target state* implies:
``result``/``completed_at``/``reason`` for Failed, Completed, Cancelled, the power-off
deadline, the report for a failed run, the notification), and the handler of each event
does the event's own work (``claim`` seeds the stage rows, ``hold_opened`` issues the
SSH key, ``override`` re-arms the held stage). :func:`heartbeat_command` is the one
effect the agent sees. An ``Action`` column used to name these effects; nothing read it,
so it could only drift from the code and was removed.

The groups (:data:`ACTIVE`, :data:`ENDED`, :data:`FAILED`, …) name the sets of states
that code tests a run against, so a query, a page and the agent cannot disagree on,
say, which runs are still in flight. ``RunState`` is a ``str`` enum whose names are its
values: a state read from the database or the wire as a plain ``str`` tests membership
directly (``row["state"] in ENDED``); :func:`sql_states` spells a group for an SQL
``IN`` list, in lifecycle order.
"""

from __future__ import annotations

import enum
from collections.abc import Set as AbstractSet
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


class Transition(NamedTuple):
    next: RunState
    notify: RunEventKind | None = None


class InvalidTransition(Exception):
    def __init__(self, state: RunState, event: RunEventType) -> None:
        super().__init__(f"run in state {state.value} cannot take event {event.value!r}")
        self.state = state
        self.event = event


S, E, K = RunState, RunEventType, RunEventKind

ENDED = frozenset({S.Completed, S.Released, S.Cancelled})
"""No event leaves these states; the run's agent token is dead."""

TERMINAL = ENDED
"""The name the server and older code use for :data:`ENDED`."""

FAILED = frozenset({S.Failed, S.FailedHolding})
"""A failure the operator has not released yet (the host may be held for inspection)."""

ACTIVE = frozenset({S.Registered, S.Queued, S.WaitingBoot, S.Booting, S.Running, S.Reporting})
"""Neither failed nor ended: the run is on its way and can still be cancelled."""

IN_FLIGHT = frozenset({S.WaitingBoot, S.Booting, S.Running, S.Reporting})
"""Dispatched and not finished: the host is powered for this run (the dispatcher's
concurrency limit counts these)."""

BUSY = ACTIVE | {S.FailedHolding}
"""The host belongs to this run: no second run, no firmware update while one is."""

AGENT_ACTIVE = frozenset(
    {S.Queued, S.WaitingBoot, S.Booting, S.Running, S.Reporting, S.Failed, S.FailedHolding}
)
"""States in which the run's agent token is accepted."""


def sql_states(states: AbstractSet[RunState]) -> str:
    """A group as an SQL ``IN`` list, in lifecycle order: ``('Failed', 'FailedHolding')``.
    The values are this enum's constants, never input, so inlining them is safe."""
    return "(" + ", ".join(f"'{s.value}'" for s in RunState if s in states) + ")"


TABLE: dict[tuple[RunState, RunEventType], Transition] = {
    (S.Registered, E.enqueue): Transition(S.Queued),
    (S.Queued, E.dispatch): Transition(S.WaitingBoot),
    (S.WaitingBoot, E.boot_requested): Transition(S.Booting),
    (S.WaitingBoot, E.boot_failed): Transition(S.Failed, K.RunFailed),
    (S.WaitingBoot, E.timeout): Transition(S.Failed, K.RunFailed),
    (S.Booting, E.timeout): Transition(S.Failed, K.RunFailed),
    # an agent started by hand (connect mode, manual boot) may say hello before dispatch
    (S.Queued, E.hello): Transition(S.Booting),
    (S.WaitingBoot, E.hello): Transition(S.Booting),
    (S.Booting, E.hello): Transition(S.Booting),
    (S.Running, E.hello): Transition(S.Running),  # agent restarted
    (S.Booting, E.claim): Transition(S.Running),
    (S.Running, E.claim): Transition(S.Running),
    (S.Running, E.stage_passed): Transition(S.Running),
    (S.Running, E.pipeline_done): Transition(S.Reporting),
    (S.Reporting, E.report_done): Transition(S.Completed, K.RunCompleted),
    (S.Running, E.stage_failed): Transition(S.Failed, K.StageFailed),
    (S.Running, E.spec_mismatch): Transition(S.Failed, K.SpecMismatch),
    (S.Running, E.timeout): Transition(S.Failed, K.RunFailed),
    (S.Booting, E.agent_lost): Transition(S.Failed, K.AgentLost),
    (S.Running, E.agent_lost): Transition(S.Failed, K.AgentLost),
    (S.Failed, E.hold_opened): Transition(S.FailedHolding, K.HoldingOpened),
    (S.FailedHolding, E.hold_opened): Transition(S.FailedHolding),  # re-issue key
    (S.FailedHolding, E.override): Transition(S.Running),
    (S.Failed, E.release): Transition(S.Released),
    (S.FailedHolding, E.release): Transition(S.Released),
    **{(s, E.cancel): Transition(S.Cancelled) for s in RunState if s in ACTIVE},
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
    if retry_pending and state not in ENDED:
        # a retry armed before the run was cancelled or released must not restart it
        return Command.retry_stage
    if state is S.Completed:
        return Command.shutdown
    if state in (S.Released, S.Cancelled):
        return Command.abort
    return Command.continue_
