"""The plugin manager, with real distributions discovered through entry points."""

from __future__ import annotations

from importlib import metadata

import pytest

from vetting_core.config import load_settings
from vetting_core.plugins import (
    DuplicateNameError,
    UnknownNameError,
    create_plugin_manager,
    describe,
    load_registry,
)

GOOD = """
    from vetting_core import (BootProviderSpec, EventObserverSpec, NotifierSpec,
        OperatorSpec, ProbeSpec, ProfileSpec, ReportSectionSpec, StageSpec, hookimpl)

    async def run(ctx):
        ctx.log("hello")

    async def collect():
        return {"tpm": {"version": "2"}}

    async def handle(event):
        pass

    class Gotify:
        def __init__(self, config):
            self.config = config
        async def send(self, event):
            pass

    @hookimpl
    def vetting_stages():
        return [StageSpec(name="Memtester", order=460, run=run)]

    @hookimpl
    def vetting_probes():
        return [ProbeSpec(name="tpm", collect=collect, sections=("tpm",))]

    @hookimpl
    def vetting_threshold_operators():
        return [OperatorSpec(name="multiple_of", check=lambda o, t, n: o % t == 0)]

    @hookimpl
    def vetting_profiles():
        return [ProfileSpec(name="memtest-only", extends="quick"),
                ProfileSpec(name="deep", fragment=True)]

    @hookimpl
    def vetting_notifiers():
        return [NotifierSpec(kind="gotify", factory=Gotify)]

    @hookimpl
    def vetting_boot_providers():
        return [BootProviderSpec(kind="redfish", factory=Gotify)]

    @hookimpl
    def vetting_report_sections():
        return [ReportSectionSpec(name="memtester", render=lambda report: None)]

    @hookimpl
    def vetting_event_observers():
        return [EventObserverSpec(name="cmdb", handle=handle)]
"""


def stage_plugin(stage: str, order: int = 500) -> str:
    return f"""
        from vetting_core import StageSpec, hookimpl

        async def run(ctx):
            pass

        @hookimpl
        def vetting_stages():
            return [StageSpec(name={stage!r}, order={order}, run=run)]
    """


def kind_plugin(hook: str, record: str, kind: str) -> str:
    return f"""
        from vetting_core import {record}, hookimpl

        @hookimpl
        def {hook}():
            return [{record}(kind={kind!r}, factory=dict)]
    """


# Everything installed before a test adds its own distributions: blocked in most tests
# so that they judge only what they create (the real ones have their own test below).
INSTALLED_PLUGINS = frozenset(ep.name for ep in metadata.entry_points(group="vetting"))


def load(**kw):
    """A registry of the test's own distributions only."""
    blocked = set(kw.pop("blocked", ())) | INSTALLED_PLUGINS
    return load_registry(blocked=blocked, **kw)


def test_discovers_plugin_with_distribution_and_version(site):
    site.distribution("vetting-memtester", "1.2.3", {"memtester": "vt_good"}, {"vt_good": GOOD})
    reg = load(environ={})
    [info] = [p for p in reg.plugins if p.name == "memtester"]
    assert (info.distribution, info.version, info.module) == ("vetting-memtester", "1.2.3", "vt_good")
    assert info.registers == {
        "stages": ["Memtester"],
        "probes": ["tpm"],
        "operators": ["multiple_of"],
        "notifiers": ["gotify"],
        "boot_providers": ["redfish"],
        "report_sections": ["memtester"],
        "observers": ["cmdb"],
        "profiles": ["memtest-only", "deep (fragment)"],
    }
    assert reg.stage("Memtester").order == 460
    assert reg.owner("notifiers", "gotify") == "memtester"
    assert reg.broken == []
    text = describe(reg)
    assert "memtester  (vetting-memtester 1.2.3; vt_good)" in text
    for line in (
        "stages: Memtester",
        "probes: tpm",
        "operators: multiple_of",
        "notifiers: gotify",
        "boot providers: redfish",
        "report sections: memtester",
        "observers: cmdb",
        "profiles: memtest-only, deep (fragment)",
    ):
        assert f"    {line}" in text


def test_block_list_argument(site):
    site.distribution("vetting-a", "1.0", {"a": "vt_a"}, {"vt_a": stage_plugin("A")})
    site.distribution("vetting-b", "1.0", {"b": "vt_b"}, {"vt_b": stage_plugin("B")})
    reg = load(blocked=["a"], environ={})
    assert set(reg.stages) == {"B"}
    assert "a" in reg.blocked
    assert "a  blocked" in describe(reg)
    with pytest.raises(UnknownNameError, match="unknown stage 'A'.*installed stages: B"):
        reg.stage("A")


def test_block_list_from_environment(site, monkeypatch):
    site.distribution("vetting-a", "1.0", {"a": "vt_a"}, {"vt_a": stage_plugin("A")})
    site.distribution("vetting-b", "1.0", {"b": "vt_b"}, {"vt_b": stage_plugin("B")})
    site.distribution("vetting-c", "1.0", {"c": "vt_c"}, {"vt_c": stage_plugin("C")})
    # explicit environ mapping
    reg = load(environ={"VETTING_DISABLE_PLUGINS": " a , ,c"})
    assert set(reg.stages) == {"B"}
    assert {"a", "c"} <= set(reg.blocked)
    # the process environment is the default
    monkeypatch.setenv("VETTING_DISABLE_PLUGINS", "b")
    reg = load()
    assert set(reg.stages) == {"A", "C"}
    # and both sources add up
    reg = load(blocked=["a"])
    assert set(reg.stages) == {"C"}


def test_settings_disable_list_is_the_block_list(site, tmp_path):
    site.distribution("vetting-a", "1.0", {"a": "vt_a"}, {"vt_a": stage_plugin("A")})
    site.distribution("vetting-b", "1.0", {"b": "vt_b"}, {"vt_b": stage_plugin("B")})
    cfg = tmp_path / "vetting.yaml"
    cfg.write_text("plugins:\n  disable: [b]\n")
    settings = load_settings(cfg, environ={})
    reg = load(blocked=settings.plugins.disable, environ={})
    assert set(reg.stages) == {"A"}


def test_plugin_failing_to_import_is_reported_and_skipped(site):
    site.distribution("vetting-good", "1.0", {"good": "vt_good"}, {"vt_good": stage_plugin("Good")})
    site.distribution(
        "vetting-broken", "0.1", {"broken": "vt_broken"},
        {"vt_broken": "import vetting_core\nraise RuntimeError('missing libfoo.so')\n"},
    )
    site.distribution("vetting-gone", "0.1", {"gone": "vt_no_such_module"}, {})
    reg = load(environ={})
    assert set(reg.stages) == {"Good"}
    broken = {b.name: b for b in reg.broken}
    assert broken["broken"].stage == "import"
    assert broken["broken"].error == "RuntimeError: missing libfoo.so"
    assert "vt_broken.py" in broken["broken"].traceback
    assert broken["gone"].error.startswith("ModuleNotFoundError")
    assert [p.name for p in reg.plugins] == ["good"]
    assert "broken  BROKEN in import: RuntimeError: missing libfoo.so (skipped)" in describe(reg)


def test_plugin_whose_hook_raises_is_skipped_as_a_whole(site):
    site.distribution("vetting-good", "1.0", {"good": "vt_good"}, {"vt_good": stage_plugin("Good")})
    site.distribution(
        "vetting-half", "1.0", {"half": "vt_half"},
        {
            "vt_half": """
                from vetting_core import StageSpec, hookimpl

                async def run(ctx):
                    pass

                @hookimpl
                def vetting_stages():
                    return [StageSpec(name="Half", order=10, run=run)]

                @hookimpl
                def vetting_probes():
                    raise OSError("cannot open /dev/ipmi0")
            """
        },
    )
    reg = load(environ={})
    assert set(reg.stages) == {"Good"}  # Half's stage is dropped with the plugin
    [b] = reg.broken
    assert (b.name, b.stage) == ("half", "vetting_probes")
    assert "cannot open /dev/ipmi0" in b.error
    assert "half" not in {p.name for p in reg.plugins}
    assert ("stages", "Half") not in reg.owners


@pytest.mark.parametrize(
    ("hook", "record", "what"),
    [
        ("vetting_notifiers", "NotifierSpec", "notifier"),
        ("vetting_boot_providers", "BootProviderSpec", "boot provider"),
    ],
)
def test_duplicate_kind_names_both_plugins(site, hook, record, what):
    site.distribution("vetting-one", "1.0", {"one": "vt_one"}, {"vt_one": kind_plugin(hook, record, "ipmi")})
    site.distribution("vetting-two", "2.0", {"two": "vt_two"}, {"vt_two": kind_plugin(hook, record, "ipmi")})
    with pytest.raises(DuplicateNameError) as err:
        load(environ={})
    msg = str(err.value)
    assert f"{what} 'ipmi'" in msg
    assert "plugin 'one' (vetting-one 1.0)" in msg
    assert "plugin 'two' (vetting-two 2.0)" in msg
    # blocking either one resolves it, as the message suggests
    assert set(load(blocked=["two"], environ={}).owners.values()) == {"one"}


def test_duplicate_stage_names_both_plugins(site):
    site.distribution("vetting-x", "1.0", {"x": "vt_x"}, {"vt_x": stage_plugin("GPU", 700)})
    site.distribution("vetting-y", "1.0", {"y": "vt_y"}, {"vt_y": stage_plugin("GPU", 710)})
    with pytest.raises(DuplicateNameError, match=r"stage 'GPU' is registered by both plugin 'x'.* and plugin 'y'"):
        load(environ={})


def test_plugin_registering_a_name_twice(site):
    src = """
        from vetting_core import StageSpec, hookimpl

        async def run(ctx):
            pass

        @hookimpl
        def vetting_stages():
            return [StageSpec(name="A", order=1, run=run), StageSpec(name="A", order=2, run=run)]
    """
    site.distribution("vetting-twice", "1.0", {"twice": "vt_twice"}, {"vt_twice": src})
    with pytest.raises(DuplicateNameError, match="plugin 'twice' registers stage 'A' twice"):
        load(environ={})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("return [StageSpec]", "vetting_stages must return StageSpec records, got type"),
        ("return [{'name': 'X'}]", "vetting_stages must return StageSpec records, got dict"),
        ("return 'Memtester'", "vetting_stages must return a list of records, got str"),
        ("return 42", "vetting_stages must return a list of records, got int"),
    ],
)
def test_wrong_record_type_is_reported(site, body, message):
    src = f"""
        from vetting_core import StageSpec, hookimpl

        @hookimpl
        def vetting_stages():
            {body}
    """
    site.distribution("vetting-bad", "1.0", {"bad": "vt_bad"}, {"vt_bad": src})
    site.distribution("vetting-good", "1.0", {"good": "vt_good"}, {"vt_good": stage_plugin("Good")})
    reg = load(environ={})
    [b] = reg.broken
    assert (b.name, b.stage) == ("bad", "vetting_stages")
    assert message in b.error
    assert set(reg.stages) == {"Good"}


def test_misspelt_hook_or_bad_signature_is_reported_not_fatal(site):
    site.distribution(
        "vetting-typo", "1.0", {"typo": "vt_typo"},
        {"vt_typo": "from vetting_core import hookimpl\n\n@hookimpl\ndef vetting_stage():\n    return []\n"},
    )
    site.distribution(
        "vetting-args", "1.0", {"args": "vt_args"},
        {"vt_args": "from vetting_core import hookimpl\n\n@hookimpl\ndef vetting_stages(config):\n    return []\n"},
    )
    site.distribution("vetting-good", "1.0", {"good": "vt_good"}, {"vt_good": stage_plugin("Good")})
    reg = load(environ={})
    broken = {b.name: b for b in reg.broken}
    assert "unknown hook 'vetting_stage'" in broken["typo"].error
    assert "vetting_stages" in broken["args"].error and "config" in broken["args"].error
    assert set(reg.stages) == {"Good"}
    assert {p.name for p in reg.plugins} == {"good"}


def test_same_entry_point_name_from_two_distributions(site):
    site.distribution("vetting-aaa", "1.0", {"dup": "vt_aaa"}, {"vt_aaa": stage_plugin("AAA")})
    site.distribution("vetting-zzz", "1.0", {"dup": "vt_zzz"}, {"vt_zzz": stage_plugin("ZZZ")})
    reg = load(environ={})
    assert len(reg.stages) == 1  # one wins, the other is reported, nothing crashes
    [b] = reg.broken
    assert b.name == "dup" and "already provided by" in b.error


def test_plugins_registered_by_hand_and_blocked_by_hand():
    import types

    from vetting_core import StageSpec, hookimpl

    async def run(ctx):
        pass

    mod = types.SimpleNamespace(vetting_stages=hookimpl(lambda: [StageSpec(name="H", order=1, run=run)]))
    reg = load_registry(entry_points=False, plugins=[("hand", mod)], environ={})
    assert set(reg.stages) == {"H"}
    assert "hand  (registered by hand;" in describe(reg)
    reg = load_registry(entry_points=False, plugins=[("hand", mod)], blocked=["hand"], environ={})
    assert reg.stages == {}


def test_each_call_builds_its_own_manager(site):
    site.distribution("vetting-a", "1.0", {"a": "vt_a"}, {"vt_a": stage_plugin("A")})
    pm1, _ = create_plugin_manager(blocked=INSTALLED_PLUGINS, environ={})
    pm2, _ = create_plugin_manager(blocked=INSTALLED_PLUGINS | {"a"}, environ={})
    assert pm1 is not pm2
    assert pm1.has_plugin("a") and not pm2.has_plugin("a")


def test_real_installed_package_registers_core_through_entry_points():
    reg = load_registry(environ={})
    core = next(p for p in reg.plugins if p.name == "core")
    assert core.distribution == "vetting"
    assert core.module == "vetting_core.builtin"
    assert set(core.registers["operators"]) >= {
        "lt", "lte", "gt", "gte", "within_pct", "eq", "ne", "regex", "delta_lte",
    }
    assert {"quick", "deep", "soak"} <= set(core.registers["profiles"])
    assert "core  (vetting 0.1.0; vetting_core.builtin)" in describe(reg)
