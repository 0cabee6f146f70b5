"""The two state machines of a firmware campaign: one table each, pure.

A **plan** (seed 003 ``update_plans.status``)::

    draft ──approve──> approved ──start──> running ⇄ paused (pause / start)
      └──────────────start (no approval required)──┘   │
    running ──finish──> completed | failed               (every host done; failed: one failed)
    draft | approved | running | paused ──cancel──> cancelled

A **host update** (seed 003 ``host_runs``; one per plan and host)::

    pending ──start──> running ──succeed──> completed
                         ├──fail──> failed
                         └──retry──> retrying ──start──> running
    pending | retrying ──cancel──> cancelled     (a running flash is never interrupted)

The server applies a move with compare-and-set (``UPDATE … WHERE id = … AND state =
… AND version = …``), like a vetting run's, so two replicas or a retried request
cannot apply one twice. Every move of a host update is an event and a notification
(:data:`NOTIFY`).
"""

from __future__ import annotations

import enum

from vetting_core.events import RunEventKind


class PlanState(str, enum.Enum):
    draft = "draft"
    approved = "approved"
    running = "running"
    paused = "paused"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"


class UpdateState(str, enum.Enum):
    pending = "pending"
    running = "running"
    retrying = "retrying"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"


PLAN_MOVES: dict[tuple[PlanState, str], PlanState] = {
    (PlanState.draft, "approve"): PlanState.approved,
    (PlanState.draft, "start"): PlanState.running,  # only when the policy needs no approval
    (PlanState.approved, "start"): PlanState.running,
    (PlanState.paused, "start"): PlanState.running,
    (PlanState.running, "pause"): PlanState.paused,
    (PlanState.running, "complete"): PlanState.completed,
    (PlanState.running, "fail"): PlanState.failed,
    (PlanState.draft, "cancel"): PlanState.cancelled,
    (PlanState.approved, "cancel"): PlanState.cancelled,
    (PlanState.running, "cancel"): PlanState.cancelled,
    (PlanState.paused, "cancel"): PlanState.cancelled,
}

UPDATE_MOVES: dict[tuple[UpdateState, str], UpdateState] = {
    (UpdateState.pending, "start"): UpdateState.running,
    (UpdateState.retrying, "start"): UpdateState.running,
    (UpdateState.running, "succeed"): UpdateState.completed,
    (UpdateState.running, "fail"): UpdateState.failed,
    (UpdateState.running, "retry"): UpdateState.retrying,
    (UpdateState.pending, "cancel"): UpdateState.cancelled,
    (UpdateState.retrying, "cancel"): UpdateState.cancelled,
}

NOTIFY: dict[UpdateState, RunEventKind] = {
    UpdateState.running: RunEventKind.FirmwareUpdateStarted,
    UpdateState.retrying: RunEventKind.FirmwareUpdateRetrying,
    UpdateState.completed: RunEventKind.FirmwareUpdateCompleted,
    UpdateState.failed: RunEventKind.FirmwareUpdateFailed,
    UpdateState.cancelled: RunEventKind.FirmwareUpdateCancelled,
}

PLAN_TERMINAL = frozenset({PlanState.completed, PlanState.failed, PlanState.cancelled})
UPDATE_TERMINAL = frozenset({UpdateState.completed, UpdateState.failed, UpdateState.cancelled})
UPDATE_ACTIVE = frozenset({UpdateState.running, UpdateState.retrying})


class InvalidMove(ValueError):
    def __init__(self, what: str, state: str, move: str) -> None:
        super().__init__(f"{what} is {state}; it cannot {move}")
        self.state = state
        self.move = move


def plan_move(state: str, move: str) -> PlanState:
    try:
        return PLAN_MOVES[(PlanState(state), move)]
    except KeyError:
        raise InvalidMove("the plan", state, move) from None


def update_move(state: str, move: str) -> UpdateState:
    try:
        return UPDATE_MOVES[(UpdateState(state), move)]
    except KeyError:
        raise InvalidMove("the host update", state, move) from None
