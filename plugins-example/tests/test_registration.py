"""What the plugin registers, checked the way Vetting loads it."""

from importlib import metadata

from vetting_core.plugins import load_registry
from vetting_core.profiles import plan_run

from vetting_example import plugin


def test_registers_everything_once(vetting_registry):
    reg = vetting_registry(plugin)
    assert set(reg.stages) == {"Memtester"}
    assert set(reg.probes) == {"platform"}
    assert "between" in reg.operators and "lte" in reg.operators
    assert set(reg.notifiers) == {"gotify"}
    assert set(reg.report_sections) == {"memtester"}
    assert reg.owner("stages", "Memtester") == "vetting_example.plugin"


def test_stage_slots_into_deep_after_memory_and_quick_memtest_adds_it(vetting_registry):
    reg = vetting_registry(plugin)
    assert [s.name for s in plan_run(reg, "quick").stages] == []  # not in quick
    deep = plan_run(reg, "deep")
    [stage] = deep.stages
    assert stage.name == "Memtester" and stage.params["mib"] == "auto" and stage.params["loops"] == 2
    rules = {(r.key, r.op) for r in deep.thresholds}
    assert {("errors", "lte"), ("coverage_pct", "between"), ("pct_of_available", "between")} <= rules
    quick = plan_run(reg, "quick-memtest", host_params={"Memtester": {"mib": 4}})
    assert [s.params["mib"] for s in quick.stages] == [4]
    assert ("pct_of_available", "between") not in {(r.key, r.op) for r in quick.thresholds}


def test_declared_entry_point_is_what_vetting_loads():
    """The installed distribution's entry point names this module (pip install -e .)."""
    [ep] = [e for e in metadata.entry_points(group="vetting") if e.name == "example"]
    assert ep.value == "vetting_example.plugin" and ep.dist.name == "vetting-plugin-example"
    reg = load_registry()  # through entry points, like the server and the agent
    assert reg.owner("stages", "Memtester") == "example"
    assert "example" not in {b.name for b in reg.broken}
    blocked = load_registry(blocked=["example"])
    assert "Memtester" not in blocked.stages and "example" in blocked.blocked


def test_imports_only_what_the_agent_has():
    """A stage plugin runs inside the agent: no server packages (vetting_server,
    litestar, piccolo), and of Vetting only vetting_core."""
    import ast
    from pathlib import Path

    import vetting_example

    allowed_vetting = {"vetting_core", "vetting_example"}
    forbidden = {"vetting_server", "litestar", "piccolo", "uvicorn", "asyncpg"}
    for path in Path(vetting_example.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            for name in names:
                top = name.split(".")[0]
                assert top not in forbidden, f"{path.name}:{node.lineno} imports {name}"
                assert not top.startswith("vetting_") or top in allowed_vetting, f"{path.name}:{node.lineno} imports {name}"
