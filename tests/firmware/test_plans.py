"""Plan documents, the maintenance window and the two state tables (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from vetting_server.firmware.plans import PlanError, Window, parse_plan, window_state
from vetting_server.firmware.states import InvalidMove, plan_move, update_move

SHA = "a" * 64


def doc(**kw):
    base = {"name": "p", "targets": ["n1"], "artifacts": [{"component": "bios", "version": "1.1", "sha256": SHA}]}
    return {**base, **kw}


def test_a_plan_document_is_checked_field_by_field():
    plan = parse_plan(doc(policy={"max_concurrent": 3, "vet_after_update": {"profile": "quick"}}))
    assert plan.policy.max_concurrent == 3 and plan.policy.stop_on_failure and plan.policy.vet_after_update.non_destructive
    for bad, message in [
        (doc(policy={"max_concurrent": 0}), r"\$\.policy\.max_concurrent: Expected `int` >= 1"),
        (doc(artifacts=[{"component": "bios", "version": "1", "sha256": "abc"}]), r"\$\.artifacts\[0\]\.sha256"),
        (doc(artifacts=[]), r"\$\.artifacts: Expected `array` of length >= 1"),
        (doc(selector={"name": "rack*"}), "either targets .* or a selector, not both"),
        (doc(targets=["n1", "n1"]), "a host is named twice"),
        (doc(policy={"maintenance_window": {"start": "25:00", "end": "04:00"}}), r"start: '25:00' is not a time"),
        (doc(policy={"maintenance_window": {"start": "22:00", "end": "04:00", "timezone": "Mars/Olympus"}}),
         "unknown time zone"),
        (doc(policy={"maintenance_window": {"start": "22:00", "end": "04:00", "days": ["someday"]}}), r"days\[0\]"),
        (doc(polcy={}), "unknown field `polcy`"),
    ]:
        with pytest.raises(PlanError, match=message):
            parse_plan(bad)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_the_maintenance_window_runs_past_midnight_from_the_days_it_opens():
    w = Window(start="22:00", end="04:00", days=["sat"], timezone="UTC")
    assert window_state(w, at("2026-12-05T23:30"))[0]  # Saturday night
    assert window_state(w, at("2026-12-06T03:59"))[0]  # Sunday early: still Saturday's window
    is_open, opens = window_state(w, at("2026-12-06T04:00"))
    assert not is_open and opens == datetime(2026, 12, 12, 22, 0, tzinfo=opens.tzinfo)  # next Saturday
    is_open, opens = window_state(w, at("2026-12-05T21:00"))
    assert not is_open and opens.hour == 22 and opens.day == 5
    paris = Window(start="01:00", end="02:00", timezone="Europe/Paris")
    assert window_state(paris, at("2026-12-05T00:30"))[0]  # 01:30 in Paris (UTC+1 in winter)
    assert not window_state(paris, at("2026-12-05T01:30"))[0]
    assert window_state(None, at("2026-12-05T12:00")) == (True, None)


def test_the_state_tables():
    assert plan_move("draft", "approve").value == "approved"
    assert plan_move("paused", "start").value == "running"
    with pytest.raises(InvalidMove, match="the plan is completed; it cannot start"):
        plan_move("completed", "start")
    assert update_move("retrying", "start").value == "running"
    with pytest.raises(InvalidMove, match="cannot cancel"):
        update_move("running", "cancel")  # a flash in progress is never cut off
