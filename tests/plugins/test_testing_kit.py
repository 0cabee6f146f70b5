"""vetting_core.testing, the plugin author's kit, tested on its own."""

import sys
from types import ModuleType

import pytest

from vetting_core import StageFailed, StageSpec, ThresholdRule, Verdict, hookimpl
from vetting_core.testing import (
    FakeTools,
    assert_measured,
    assert_verdict,
    load_capture,
    make_registry,
    run_record,
    run_stage,
    run_stage_sync,
)

pytestmark = pytest.mark.anyio


async def measure_tool_output(ctx):
    """A tiny stage: runs `thermo`, parses its number, measures it."""
    result = await ctx.run_tool(["thermo", "--celsius", ctx.params["sensor"]], timeout=ctx.params.get("t", 5))
    if result.timed_out:
        raise StageFailed("thermo hung")
    ctx.log(f"thermo said {result.stdout.strip()}")
    ctx.measure("temp", ctx.params["sensor"], float(result.stdout), "C")


TEMP = StageSpec(
    name="Thermo",
    order=850,
    run=measure_tool_output,
    params={"*": {"sensor": "cpu0"}, "deep": {"sensor": "cpu1"}},
    thresholds=[ThresholdRule(kind="temp", key="cpu*", op="lte", threshold=85)],
)


def plugin_module(name, **hooks):
    mod = ModuleType(name)
    for hook, fn in hooks.items():
        setattr(mod, hook, hookimpl(fn))
    return mod


async def test_replay_records_argv_and_judges_with_defaults(fake_tools, stage_workdir):
    tool = fake_tools.add("thermo", stdout="91.5\n")
    run = await run_stage(TEMP, workdir=stage_workdir, profile="deep")
    assert tool.calls() == [["--celsius", "cpu1"]]  # deep's parameter
    assert_verdict(run, "passed")
    assert_measured(run, "temp", "cpu1", value=91.5, unit="C", count=1, passes=False)
    assert run.final_verdict() is Verdict.failed
    assert str(run.breaches()[0]) == "temp/cpu1=91.5 lte 85 (critical): BREACH"
    with pytest.raises(AssertionError, match=r"threshold breached:\n  temp/cpu1=91.5 lte 85"):
        assert_measured(run, "temp", "cpu1", passes=True)


async def test_assertion_messages_say_what_was_measured(fake_tools, stage_workdir):
    fake_tools.add("thermo", stdout="40\n")
    run = await run_stage(TEMP, params={"sensor": "gpu0"}, workdir=stage_workdir)
    with pytest.raises(AssertionError, match=r"measured nothing for fan/\*; it measured: temp/gpu0"):
        assert_measured(run, "fan")
    with pytest.raises(AssertionError, match=r"no threshold rule judges temp/gpu0 .* rules: temp/cpu\* lte 85"):
        assert_measured(run, "temp", "gpu0", passes=True)
    with pytest.raises(AssertionError, match=r"temp/gpu0 = 40.0, expected 41"):
        assert_measured(run, "temp", "gpu0", value=41)
    assert_measured(run, "temp", "gpu0", value=41, abs=1.5)
    with pytest.raises(AssertionError, match=r"(?s)ended 'passed', expected 'failed'.*--- stage log ---.*thermo said 40"):
        assert_verdict(run, "failed")


async def test_exit_code_and_stderr_are_replayed(fake_tools, tmp_path):
    (tmp_path / "case.stdout").write_text("partial\n")
    (tmp_path / "case.stderr").write_text("thermo: sensor vanished\n")
    (tmp_path / "case.rc").write_text("3\n")
    fake_tools.replay("thermo", tmp_path, "case")
    from vetting_core.tools import run_tool

    result = await run_tool(["thermo"])
    assert (result.stdout, result.stderr, result.returncode) == ("partial\n", "thermo: sensor vanished\n", 3)


async def test_a_hanging_fake_is_killed_by_the_tool_timeout(fake_tools, stage_workdir):
    import os

    tool = fake_tools.add("thermo", stdout="12\n", hang=True)
    run = await run_stage(TEMP, params={"t": 0.5}, workdir=stage_workdir)
    assert_verdict(run, "failed", reason="thermo hung")
    [pid] = tool.pids()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_load_capture_lists_what_exists(tmp_path):
    (tmp_path / "pass.stdout").write_text("ok")
    cap = load_capture(tmp_path, "pass")
    assert cap == ("ok", "", 0)
    with pytest.raises(FileNotFoundError, match=r"no capture 'fail' in .* \(have: pass\)"):
        load_capture(tmp_path, "fail")


def test_fake_tool_names_are_plain(tmp_path, monkeypatch):
    tools = FakeTools(tmp_path, monkeypatch)
    with pytest.raises(ValueError):
        tools.add("../evil")


def test_make_registry_includes_core_and_reports_broken_plugins():
    good = plugin_module("good", vetting_stages=lambda: [TEMP])

    def boom():
        raise RuntimeError("kaput")

    bad = plugin_module("bad", vetting_stages=boom)
    reg = make_registry(good, bad)
    assert set(reg.stages) == {"Thermo"} and "lte" in reg.operators and reg.owner("stages", "Thermo") == "good"
    assert [(b.name, b.stage, b.error) for b in reg.broken] == [("bad", "vetting_stages", "RuntimeError: kaput")]
    assert "core" in {p.name for p in reg.plugins}


def test_vetting_registry_fixture_fails_on_a_broken_plugin(vetting_registry):
    bad = plugin_module("bad", vetting_stages=lambda: ["not a StageSpec"])
    with pytest.raises(AssertionError, match=r"broken plugin\(s\): bad in vetting_stages: TypeError"):
        vetting_registry(bad)


def test_run_stage_sync_and_run_record(fake_tools):
    fake_tools.add("thermo", stdout="95\n")
    run = run_stage_sync(TEMP)
    record = run_record(run, host_name="n1")
    assert record.run.state == "Failed" and record.run.failed_stage == "Thermo"
    assert [s.state for s in record.stages] == [Verdict.failed]
    [ev] = [e for e in record.evaluations if not e.passed]
    assert (ev.key, ev.observed, record.thresholds[ev.rule_id - 1].op) == ("cpu0", 95.0, "lte")


def test_kit_imports_nothing_outside_vetting_core():
    import vetting_core.testing as kit

    names = {m.split(".")[0] for m in sys.modules if m.startswith("vetting")}
    src = open(kit.__file__).read()
    assert "import vetting_" not in src.replace("import vetting_core", "") and "from vetting_" not in src
    assert "vetting_core" in names


@pytest.mark.anyio
async def test_run_stage_hands_the_stage_test_peers(tmp_path):
    """``peers=`` stands in for the orchestrator: here a real pool of one-shot iperf3
    servers on loopback, leased by the real Network stage for every NIC and direction."""
    import shutil
    from contextlib import asynccontextmanager

    from vetting_core import Peer
    from vetting_stages.network.iperf_server import IperfServerPool
    from vetting_stages.network.stage import STAGE as NETWORK

    if shutil.which("iperf3") is None:
        pytest.fail("iperf3 is a test dependency (.ci/debian-packages.txt)")
    leased = []
    async with IperfServerPool(range(5301, 5311), bind="127.0.0.1") as pool:

        @asynccontextmanager
        async def peers(kind):
            async with pool.lease() as lease:
                leased.append((kind, lease.port))
                yield Peer(kind=kind, host="127.0.0.1", port=lease.port)

        run = await run_stage(NETWORK, params={"nics": ["lo"], "duration_s": 1, "parallel": 1, "bind": False},
                              peers=peers, workdir=tmp_path)
    assert run.result.verdict is Verdict.passed, run.result.reason
    assert [k for k, _ in leased] == ["iperf3", "iperf3"]  # send, then receive
    assert run.context.peers_available and run.result.summary["tested"] == ["nic:lo"]
    (sent,) = assert_measured(run, "network", "lo/send/throughput_mbps", unit="Mbit/s")
    assert sent.value > 1


def test_concurrent_invocations_are_recorded_whole(tmp_path):
    """Each fake writes its argv as one record: 50 processes at once never interleave
    (a stage running two workers in parallel must see two clean calls)."""
    import subprocess

    tool = FakeTools(tmp_path / "bin").add("tool", stdout="x")
    procs = [subprocess.Popen([str(tool.path), "a b", "", "c\n", str(i)], stdout=subprocess.DEVNULL) for i in range(50)]
    for p in procs:
        p.wait()
    calls = tool.calls()
    assert all(c[:3] == ["a b", "", "c\n"] and len(c) == 4 for c in calls)
    assert sorted(int(c[3]) for c in calls) == list(range(50))
