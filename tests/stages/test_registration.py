"""The six stages are registered through the ``vetting`` entry points and planned by profile."""

from __future__ import annotations

from vetting_core.plugins import load_registry
from vetting_core.profiles import plan_run

MINE = {"CPUStress": 400, "Memory": 450, "Network": 600, "GPU": 700, "PSU": 800, "Burn": 900}


def test_stages_registered_with_orders():
    reg = load_registry()
    for name, order in MINE.items():
        spec = reg.stage(name)
        assert spec.order == order
        assert not spec.destructive


def test_profiles_plan_durations_and_scoped_thresholds():
    reg = load_registry()
    quick = plan_run(reg, "quick", only=list(MINE))
    soak = plan_run(reg, "soak", only=list(MINE))
    q = {s.name: s.params for s in quick.stages}
    s = {st.name: st.params for st in soak.stages}
    assert [st.name for st in quick.stages] == list(MINE)
    assert q["CPUStress"]["duration_s"] <= 60 and q["Burn"]["duration_s"] <= 600
    assert s["Burn"]["duration_s"] == 12 * 3600
    quick_total = sum(p.get("duration_s", 0) for p in q.values())
    assert quick_total <= 600, f"quick stage durations add up to {quick_total}s"
    stages = {r.stage for r in quick.thresholds if r.kind in ("stress_ng", "psu_rail", "gpu_counter", "nic_counter")}
    assert stages == {"CPUStress", "PSU", "GPU", "Network"}
    assert all(r.stage != "*" for r in quick.thresholds)


def test_deep_fits_its_two_hours_on_a_four_ssd_server():
    """docs/profiles.md's budget: deep = timed stages + SMART's long-test budget +
    Storage (~4 min per SSD, 4 SSDs) + 2 NICs of Network ≤ 2 hours."""
    reg = load_registry()
    deep = {s.name: s.params for s in plan_run(reg, "deep").stages}
    timed = sum(deep[n]["duration_s"] for n in ("CPUStress", "Memory", "GPU", "Burn"))
    network = 2 * 2 * deep["Network"]["duration_s"]  # two NICs, both directions
    storage = 4 * (2 * deep["Storage"]["runtime_s"] + 120)  # reads + 8 GiB verified writes on an SSD
    total = timed + network + deep["SMART"]["self_test_budget_s"] + storage
    assert deep["Storage"]["badblocks"] is False  # full-surface tests are soak's
    assert total <= 2 * 3600, f"deep plans {total / 60:.0f} minutes"
