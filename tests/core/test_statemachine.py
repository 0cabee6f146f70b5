"""The run state machine, exhaustively: every (state, event) pair.

``EXPECTED`` is written out by hand from the lifecycle in the seed and DESIGN.md, not
derived from ``statemachine.TABLE``; every pair not in it must be refused. The
properties below check the shape of the lifecycle independently of either table.
"""

from __future__ import annotations

import itertools
from collections import deque

import pytest

from vetting_core.events import RunEventKind as K
from vetting_core.statemachine import (
    ACTIVE,
    AGENT_ACTIVE,
    BUSY,
    ENDED,
    FAILED,
    IN_FLIGHT,
    TABLE,
    TERMINAL,
    Command,
    InvalidTransition,
    RunEventType as E,
    RunState as S,
    allowed_events,
    heartbeat_command,
    sql_states,
    transition,
)

CANCELLABLE = {S.Registered, S.Queued, S.WaitingBoot, S.Booting, S.Running, S.Reporting}

EXPECTED: dict[tuple[S, E], tuple[S, K | None]] = {
    (S.Registered, E.enqueue): (S.Queued, None),
    (S.Queued, E.dispatch): (S.WaitingBoot, None),
    (S.Queued, E.hello): (S.Booting, None),
    (S.WaitingBoot, E.boot_requested): (S.Booting, None),
    (S.WaitingBoot, E.boot_failed): (S.Failed, K.RunFailed),
    (S.WaitingBoot, E.timeout): (S.Failed, K.RunFailed),
    (S.WaitingBoot, E.hello): (S.Booting, None),
    (S.Booting, E.hello): (S.Booting, None),
    (S.Booting, E.claim): (S.Running, None),
    (S.Booting, E.timeout): (S.Failed, K.RunFailed),
    (S.Booting, E.agent_lost): (S.Failed, K.AgentLost),
    (S.Running, E.hello): (S.Running, None),
    (S.Running, E.claim): (S.Running, None),
    (S.Running, E.stage_passed): (S.Running, None),
    (S.Running, E.pipeline_done): (S.Reporting, None),
    (S.Running, E.stage_failed): (S.Failed, K.StageFailed),
    (S.Running, E.spec_mismatch): (S.Failed, K.SpecMismatch),
    (S.Running, E.timeout): (S.Failed, K.RunFailed),
    (S.Running, E.agent_lost): (S.Failed, K.AgentLost),
    (S.Reporting, E.report_done): (S.Completed, K.RunCompleted),
    (S.Failed, E.hold_opened): (S.FailedHolding, K.HoldingOpened),
    (S.Failed, E.release): (S.Released, None),
    (S.FailedHolding, E.hold_opened): (S.FailedHolding, None),
    (S.FailedHolding, E.override): (S.Running, None),
    (S.FailedHolding, E.release): (S.Released, None),
    **{(s, E.cancel): (S.Cancelled, None) for s in CANCELLABLE},
}

ALL_PAIRS = list(itertools.product(S, E))


@pytest.mark.parametrize(("state", "event"), ALL_PAIRS, ids=lambda x: x.value)
def test_every_pair(state, event):
    expected = EXPECTED.get((state, event))
    if expected is None:
        with pytest.raises(InvalidTransition) as err:
            transition(state, event)
        assert err.value.state is state and err.value.event is event
        assert state.value in str(err.value) and event.value in str(err.value)
        assert event not in allowed_events(state)
    else:
        t = transition(state, event)
        assert (t.next, t.notify) == expected
        assert event in allowed_events(state)
        # strings from the database or the wire work the same
        assert transition(state.value, event.value) == t


def test_table_has_nothing_more_than_expected():
    assert set(TABLE) == set(EXPECTED)


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError):
        transition("Exploded", "enqueue")
    with pytest.raises(ValueError):
        transition("Queued", "explode")


def test_terminal_states_accept_nothing():
    assert TERMINAL == {S.Completed, S.Released, S.Cancelled}
    for state in TERMINAL:
        assert allowed_events(state) == []
        for event in E:
            with pytest.raises(InvalidTransition):
                transition(state, event)


def test_cancel_exactly_from_cancellable_states():
    accepted = {s for s in S if (s, E.cancel) in TABLE}
    assert accepted == CANCELLABLE
    # a failed run is released (its hold closed), not cancelled
    assert S.Failed not in accepted and S.FailedHolding not in accepted


def _reachable(start: S) -> dict[S, list[S]]:
    """Breadth-first search; returns each reachable state's predecessors on some path."""
    preds: dict[S, list[S]] = {start: []}
    queue = deque([start])
    while queue:
        s = queue.popleft()
        for (src, _e), t in TABLE.items():
            if src is s and t.next not in preds:
                preds[t.next] = [s]
                queue.append(t.next)
    return preds


def test_every_state_reachable_from_registered():
    assert set(_reachable(S.Registered)) == set(S)


def test_completed_only_via_reporting_and_reporting_only_from_running():
    into_completed = {src for (src, _e), t in TABLE.items() if t.next is S.Completed}
    assert into_completed == {S.Reporting}
    into_reporting = {src for (src, _e), t in TABLE.items() if t.next is S.Reporting}
    assert into_reporting == {S.Running}
    into_released = {src for (src, _e), t in TABLE.items() if t.next is S.Released}
    assert into_released == {S.Failed, S.FailedHolding}


def test_every_way_into_failed_notifies():
    for (src, event), t in TABLE.items():
        if t.next is S.Failed:
            assert t.notify is not None, (src, event)


def test_happy_path():
    state = S.Registered
    for event in (E.enqueue, E.dispatch, E.boot_requested, E.hello, E.claim,
                  E.stage_passed, E.stage_passed, E.pipeline_done, E.report_done):
        state = transition(state, event).next
    assert state is S.Completed


def test_failure_hold_override_release_path():
    state = S.Running
    for event, expected in ((E.stage_failed, S.Failed), (E.hold_opened, S.FailedHolding),
                            (E.override, S.Running), (E.stage_failed, S.Failed),
                            (E.hold_opened, S.FailedHolding), (E.release, S.Released)):
        state = transition(state, event).next
        assert state is expected


def test_groups_written_out():
    assert ENDED == TERMINAL == {S.Completed, S.Released, S.Cancelled}
    assert FAILED == {S.Failed, S.FailedHolding}
    assert ACTIVE == CANCELLABLE
    assert IN_FLIGHT == {S.WaitingBoot, S.Booting, S.Running, S.Reporting}
    assert BUSY == CANCELLABLE | {S.FailedHolding}


def test_active_failed_ended_partition_the_states():
    assert ACTIVE | FAILED | ENDED == set(S)
    assert ACTIVE.isdisjoint(FAILED) and ACTIVE.isdisjoint(ENDED) and FAILED.isdisjoint(ENDED)
    assert IN_FLIGHT < ACTIVE < BUSY


def test_groups_match_the_table():
    # ENDED: nothing leaves; FAILED: only release, hold and override leave; ACTIVE: cancellable
    assert {s for s in S if not allowed_events(s)} == ENDED
    assert {s for s in S if (s, E.cancel) in TABLE} == ACTIVE
    assert {t.next for (_s, e), t in TABLE.items() if e in (E.stage_failed, E.hold_opened)} == FAILED


@pytest.mark.parametrize("state", list(S), ids=lambda s: s.value)
def test_a_plain_string_tests_group_membership(state):
    # rows from the database and replies from the wire carry the state as a str
    for group in (ACTIVE, ENDED, FAILED, IN_FLIGHT, BUSY, AGENT_ACTIVE):
        assert (state.value in group) is (state in group)
    assert "Exploded" not in ACTIVE | FAILED | ENDED


def test_sql_states_in_lifecycle_order():
    assert sql_states(FAILED) == "('Failed', 'FailedHolding')"
    assert sql_states(IN_FLIGHT) == "('WaitingBoot', 'Booting', 'Running', 'Reporting')"
    assert sql_states(ENDED) == "('Completed', 'Released', 'Cancelled')"


def test_agent_token_states():
    assert AGENT_ACTIVE.isdisjoint(TERMINAL)
    assert S.Registered not in AGENT_ACTIVE
    assert AGENT_ACTIVE | TERMINAL | {S.Registered} == set(S)


HEARTBEAT = {
    S.Registered: Command.continue_,
    S.Queued: Command.continue_,
    S.WaitingBoot: Command.continue_,
    S.Booting: Command.continue_,
    S.Running: Command.continue_,
    S.Reporting: Command.continue_,
    S.Failed: Command.continue_,
    S.FailedHolding: Command.continue_,  # keeps heartbeating so an override reaches it
    S.Completed: Command.shutdown,
    S.Released: Command.abort,
    S.Cancelled: Command.abort,
}


@pytest.mark.parametrize("state", list(S), ids=lambda s: s.value)
def test_heartbeat_command_for_every_state(state):
    assert heartbeat_command(state) is HEARTBEAT[state]
    assert heartbeat_command(state.value) is HEARTBEAT[state]
    if state in TERMINAL:  # a stale retry flag never revives a finished run
        assert heartbeat_command(state, retry_pending=True) is HEARTBEAT[state]
    else:
        assert heartbeat_command(state, retry_pending=True) is Command.retry_stage
    assert Command(heartbeat_command(state).value).value in {"continue", "shutdown", "abort"}
