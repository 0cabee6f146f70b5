"""A test-only plugin for the server tests: small stages and thresholds, profile ``srvtest``.

Registered by hand (``load_registry(plugins=[("server-test", server_plugin)])``); the
server never runs agent stages, so ``Alpha``/``Beta`` only need names and thresholds.
``Gate`` runs on the orchestrator and fails when the stored inventory says
``{"gate": "closed"}``.
"""

from __future__ import annotations

from vetting_core import ProfileSpec, StageFailed, StageSpec, ThresholdRule, hookimpl
from vetting_core.model import Severity


async def _agent_only(ctx):  # pragma: no cover - the agent runs these
    raise AssertionError("agent stages never run on the server")


async def _gate(ctx):
    ctx.log("gate checking the inventory")
    ctx.measure("gate", "checks", 1.0)
    if ctx.inventory.get("gate") == "closed":
        raise StageFailed("the gate is closed")


@hookimpl
def vetting_stages():
    return [
        StageSpec(
            name="Alpha", run=_agent_only, order=10, profiles=("srvtest",), timeout_s=30,
            thresholds=(
                ThresholdRule(kind="temp", key="cpu/*", op="lt", threshold=90.0, unit="C"),
                ThresholdRule(kind="power", key="*", op="lte", threshold=500.0, severity=Severity.warning),
            ),
        ),
        StageSpec(name="Gate", run=_gate, order=20, profiles=("srvtest",), runs_on="orchestrator", timeout_s=10),
        StageSpec(
            name="Beta", run=_agent_only, order=30, profiles=("srvtest",), timeout_s=30, destructive=True,
            thresholds=(ThresholdRule(kind="throughput", key="*", op="within_pct", threshold=10.0, nominal=1000.0),),
        ),
    ]


@hookimpl
def vetting_profiles():
    return [ProfileSpec(name="srvtest", description="server tests: Alpha, Gate, Beta")]


SEEN: list = []  # run events the observer received (tests read it)


async def _observe(event):
    SEEN.append(event)


@hookimpl
def vetting_event_observers():
    from vetting_core import EventObserverSpec

    return [EventObserverSpec(name="server-test-recorder", handle=_observe)]
