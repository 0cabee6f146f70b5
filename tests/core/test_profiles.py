"""Profiles and run plans built from a registry of real (hand-registered) plugins."""

from __future__ import annotations

import types

import pytest

from vetting_core import ProfileSpec, StageSpec, ThresholdRule, hookimpl
from vetting_core.builtin import vetting_profiles as builtin_profiles
from vetting_core.plugins import UnknownNameError, load_registry
from vetting_core.profiles import ProfileError, plan_run, resolve_profiles


async def _run(ctx):
    pass


def stage(name, order, **kw):
    return StageSpec(name=name, order=order, run=_run, **kw)


def plugin(stages=(), profiles=()):
    ns = types.SimpleNamespace()
    if stages:
        ns.vetting_stages = hookimpl(lambda: list(stages))
    if profiles:
        ns.vetting_profiles = hookimpl(lambda: list(profiles))
    return ns


CORE = types.SimpleNamespace(vetting_profiles=builtin_profiles)

STAGES = [
    stage("Burn", 900, profiles=("soak",)),
    stage("InventoryCheck", 100),
    stage("SMART", 300, params={"*": {"short": True, "timeout_s": 120}, "deep": {"short": False}}),
    stage("Storage", 500, destructive=True, profiles=("deep",),
          params={"*": {"mode": "read"}, "deep": {"mode": "write", "passes": 1}},
          thresholds=[ThresholdRule(kind="throughput", key="*/read_mbps", op="gte", threshold=100.0)]),
    stage("CPUStress", 400, params={"*": {"seconds": 60}, "quick": {"seconds": 30}, "deep": {"seconds": 600}},
          thresholds=[ThresholdRule(kind="temp", key="cpu/*", op="lte", threshold=95.0)]),
    stage("Spec", 150),
]


def registry(*extra):
    return load_registry(
        entry_points=False,
        plugins=[("core", CORE), ("stages", plugin(STAGES)), *[(f"p{i}", p) for i, p in enumerate(extra)]],
        environ={},
    )


def names(plan):
    return [s.name for s in plan.stages]


def test_stages_ordered_by_order_and_opt_in():
    reg = registry()
    assert names(plan_run(reg, "quick")) == ["InventoryCheck", "Spec", "SMART", "CPUStress"]
    assert names(plan_run(reg, "deep")) == ["InventoryCheck", "Spec", "SMART", "CPUStress", "Storage"]
    assert names(plan_run(reg, "soak")) == ["InventoryCheck", "Spec", "SMART", "CPUStress", "Burn"]
    assert [s.ordinal for s in plan_run(reg, "deep").stages] == [0, 1, 2, 3, 4]


def test_third_party_stage_slots_in_by_order():
    reg = registry(plugin([stage("Memtester", 460)]))
    assert names(plan_run(reg, "quick")) == ["InventoryCheck", "Spec", "SMART", "CPUStress", "Memtester"]
    reg = registry(plugin([stage("Early", 120)]))
    assert names(plan_run(reg, "quick"))[:2] == ["InventoryCheck", "Early"]


def test_params_precedence():
    reg = registry(
        plugin(profiles=[
            ProfileSpec(name="deep-fast", extends="deep", params={"CPUStress": {"seconds": 300, "workers": 4}}),
            ProfileSpec(name="deep-fast", fragment=True, params={"CPUStress": {"workers": 8, "frag": 1}}),
        ])
    )
    cpu = {s.name: s for s in plan_run(reg, "deep-fast").stages}["CPUStress"].params
    # "*" 60 < stage "deep" 600 (lineage) < profile 300; fragment beats profile
    assert cpu == {"seconds": 300, "workers": 8, "frag": 1}
    plan = plan_run(reg, "deep-fast", host_params={"CPUStress": {"workers": 2}, "SMART": {"short": True}})
    by = {s.name: s for s in plan.stages}
    assert by["CPUStress"].params == {"seconds": 300, "workers": 2, "frag": 1}  # host wins
    assert by["SMART"].params == {"short": True, "timeout_s": 120}
    assert by["SMART"].timeout_s == 120.0  # a timeout_s parameter becomes the stage timeout
    assert by["Storage"].params == {"mode": "write", "passes": 1}  # inherited "deep" stage params
    quick = {s.name: s for s in plan_run(reg, "quick").stages}
    assert quick["CPUStress"].params == {"seconds": 30}
    assert quick["SMART"].params == {"short": True, "timeout_s": 120}


def test_extends_chain_inherits_include_exclude_and_fragments():
    reg = registry(
        plugin(profiles=[
            ProfileSpec(name="a", extends="deep", exclude=("SMART",)),
            ProfileSpec(name="b", extends="a", include=("Burn",)),
            ProfileSpec(name="c", extends="b", exclude=("Burn",), description="c!"),
        ]),
        plugin(profiles=[ProfileSpec(name="deep", fragment=True, params={"Storage": {"passes": 3}})]),
    )
    assert names(plan_run(reg, "a")) == ["InventoryCheck", "Spec", "CPUStress", "Storage"]
    assert names(plan_run(reg, "b")) == ["InventoryCheck", "Spec", "CPUStress", "Storage", "Burn"]
    assert names(plan_run(reg, "c")) == ["InventoryCheck", "Spec", "CPUStress", "Storage"]
    profiles = resolve_profiles(reg)
    assert profiles["c"].lineage == ["c", "b", "a", "deep"]
    assert profiles["c"].description == "c!"
    # a fragment of "deep" (from another plugin) reaches profiles extending deep
    storage = {s.name: s for s in plan_run(reg, "c").stages}["Storage"]
    assert storage.params["passes"] == 3
    assert "p1" in profiles["deep"].contributors


def test_extends_cycle_and_unknown_parent():
    reg = registry(plugin(profiles=[
        ProfileSpec(name="x", extends="y"), ProfileSpec(name="y", extends="z"), ProfileSpec(name="z", extends="x"),
    ]))
    with pytest.raises(ProfileError, match="extends itself: x → y → z → x"):
        plan_run(reg, "quick")
    reg = registry(plugin(profiles=[ProfileSpec(name="x", extends="nope")]))
    with pytest.raises(ProfileError, match="profile 'x' extends unknown profile 'nope'"):
        plan_run(reg, "quick")


def test_fragment_of_unknown_profile_and_duplicate_profile():
    reg = registry(plugin(profiles=[ProfileSpec(name="nightly", fragment=True)]))
    with pytest.raises(ProfileError, match="plugin 'p0' extends unknown profile 'nightly'"):
        plan_run(reg, "quick")
    reg = registry(plugin(profiles=[ProfileSpec(name="quick")]))
    with pytest.raises(ProfileError, match="'quick' is registered by both plugin 'core' and plugin 'p0'"):
        plan_run(reg, "quick")


def test_unknown_profile_and_unknown_stage():
    reg = registry()
    with pytest.raises(ProfileError, match=r"unknown profile 'fast' \(known: deep, quick, soak\)"):
        plan_run(reg, "fast")
    bad = registry(plugin(profiles=[ProfileSpec(name="q2", extends="quick", include=("Memtestr",))]))
    with pytest.raises(UnknownNameError, match="unknown stage 'Memtestr'.*installed stages: .*SMART"):
        plan_run(bad, "q2")
    with pytest.raises(UnknownNameError, match="unknown stage 'GPU'"):
        plan_run(reg, "quick", only=["GPU"])
    assert names(plan_run(reg, "quick", only=["SMART", "InventoryCheck"])) == ["InventoryCheck", "SMART"]


def test_non_destructive():
    reg = registry(plugin(profiles=[ProfileSpec(name="safe-deep", extends="deep", non_destructive_only=True)]))
    deep = {s.name: s for s in plan_run(reg, "deep").stages}
    assert deep["Storage"].destructive is True and plan_run(reg, "deep").non_destructive is False
    plan = plan_run(reg, "deep", non_destructive=True)
    assert plan.non_destructive and not any(s.destructive for s in plan.stages)
    plan = plan_run(reg, "safe-deep")  # the profile forces it
    assert plan.non_destructive and not any(s.destructive for s in plan.stages)


def test_thresholds_scoped_and_host_override_replaces():
    reg = registry(plugin(profiles=[ProfileSpec(name="deep", fragment=True, thresholds=[
        ThresholdRule(stage="*", kind="temp", key="gpu*", op="lte", threshold=85.0),
    ])]))
    plan = plan_run(reg, "deep", host_thresholds=[
        ThresholdRule(stage="CPUStress", kind="temp", key="cpu/*", op="lte", threshold=99.0),
        ThresholdRule(stage="Storage", kind="throughput", key="*/read_mbps", op="gte", threshold=50.0,
                      source="whatever"),
    ])
    rules = {(r.stage, r.kind, r.key, r.op): r for r in plan.thresholds}
    assert len(rules) == len(plan.thresholds) == 3
    # stage defaults with stage "*" are scoped to their own stage
    cpu = rules[("CPUStress", "temp", "cpu/*", "lte")]
    assert (cpu.threshold, cpu.source) == (99.0, "host_override")
    storage = rules[("Storage", "throughput", "*/read_mbps", "gte")]
    assert (storage.threshold, storage.source) == (50.0, "host_override")
    assert rules[("*", "temp", "gpu*", "lte")].threshold == 85.0
    # a different op on the same key is added, not replaced
    plan = plan_run(reg, "deep", host_thresholds=[
        ThresholdRule(stage="CPUStress", kind="temp", key="cpu/*", op="lt", threshold=90.0)])
    assert len(plan.thresholds) == 4
