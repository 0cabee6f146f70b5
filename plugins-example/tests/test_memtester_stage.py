"""The Memtester stage, driven by the author's kit: replayed real output on PATH,
a real StageContext, the stage's own thresholds (with the plugin's ``between``)."""

import os
import shutil
import time
from pathlib import Path

import pytest
from vetting_core import Verdict
from vetting_core.testing import assert_measured, assert_verdict, run_stage

from vetting_example import memtester, plugin

FIXTURES = Path(__file__).parent / "fixtures" / "memtester" / "4.6.0"

pytestmark = pytest.mark.anyio


@pytest.fixture
def registry(vetting_registry):
    return vetting_registry(plugin)


async def run(registry, stage_workdir, **params):
    return await run_stage(
        "Memtester", registry=registry, params=params, workdir=stage_workdir, profile="quick"
    )


async def test_clean_pass(fake_tools, registry, stage_workdir):
    tool = fake_tools.replay("memtester", FIXTURES, "pass-4m-2loops")
    result = await run(registry, stage_workdir, mib=4, loops=2)
    assert_verdict(result, "passed")
    assert tool.calls() == [["4M", "2"]]
    assert_measured(result, "memtester", "errors", value=0, passes=True)
    assert_measured(result, "memtester", "coverage_pct", value=100, unit="%", passes=True)
    assert_measured(result, "memtester", "locked", value=1, passes=True)
    assert_measured(result, "memtester", "tested_mib", value=4.0)
    assert result.final_verdict() is Verdict.passed
    # the raw output is kept, and what reached the log is readable (no backspaces)
    [artifact] = result.result.artifacts
    assert artifact.kind == "memtester-output" and artifact.size_bytes > 100_000
    assert "  Stuck Address       : ok" in result.log_text and "\b" not in result.log_text
    # progress climbed to 1.0 through the 36 tests
    fractions = [f for _, f, _ in result.progress if f is not None]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) > 30
    [step] = result.result.substeps
    assert step.state is Verdict.passed and step.summary["tests_passed"] == 36


async def test_exit_zero_with_64k_tested_is_failed_by_the_coverage_threshold(
    fake_tools, registry, stage_workdir
):
    fake_tools.replay("memtester", FIXTURES, "mlock-limit-64k")
    result = await run(registry, stage_workdir, mib=4)
    # every test said ok and memtester exited 0: the plugin passes the stage...
    assert_verdict(result, "passed")
    # ...but the orchestrator judges coverage with the plugin's `between` operator
    assert_measured(result, "memtester", "coverage_pct", value=1.5625, passes=False)
    [breach] = result.breaches()
    assert breach.rule.op == "between" and breach.rule.threshold == "99..100"
    assert result.final_verdict() is Verdict.failed


async def test_unlocked_memory_is_a_warning_only(fake_tools, registry, stage_workdir):
    fake_tools.replay("memtester", FIXTURES, "mlock-denied")
    result = await run(registry, stage_workdir, mib=4)
    assert_measured(result, "memtester", "locked", value=0, passes=False)
    assert result.final_verdict() is Verdict.passed  # severity warning


async def test_memory_errors_fail_the_stage_and_reach_the_log(fake_tools, registry, stage_workdir):
    fake_tools.replay("memtester", FIXTURES, "injected")
    result = await run(registry, stage_workdir, mib=16)
    assert_verdict(result, "failed", reason="18 memory error(s) reported")
    assert_measured(result, "memtester", "errors", value=26, passes=False)  # 18 lines + 8 tests
    failures = [line for line in result.lines if line.message.startswith("FAILURE")]
    assert len(failures) == 18 and {line.level for line in failures} == {"error"}
    [step] = result.result.substeps
    assert step.state is Verdict.failed and step.summary["failures"] == 18


async def test_killed_tool_fails(fake_tools, registry, stage_workdir):
    fake_tools.replay("memtester", FIXTURES, "killed")
    result = await run(registry, stage_workdir, mib=64)
    assert_verdict(result, "failed", reason="killed during Random Value")


async def test_two_workers_run_concurrently(fake_tools, registry, stage_workdir):
    tool = fake_tools.replay("memtester", FIXTURES, "pass-4m-2loops", delay_s=0.5)
    started = time.monotonic()
    result = await run(registry, stage_workdir, mib=8, loops=2, workers=2)
    assert time.monotonic() - started < 0.95  # 2 × 0.5 s in parallel
    assert_verdict(result, "passed")
    assert tool.calls() == [["4M", "2"], ["4M", "2"]]
    assert [s.name for s in result.result.substeps] == ["memtester#0", "memtester#1"]
    assert_measured(result, "memtester", "tested_mib", value=8.0)


async def test_hanging_tool_is_killed_at_its_timeout(fake_tools, registry, stage_workdir):
    tool = fake_tools.replay("memtester", FIXTURES, "killed", hang=True)
    started = time.monotonic()
    result = await run(registry, stage_workdir, mib=64, tool_timeout_s=1)
    assert time.monotonic() - started < 5
    assert_verdict(result, "failed", reason="timed out and was killed")
    [pid] = tool.pids()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_stage_timeout_cancels_and_kills_the_tool(fake_tools, registry, stage_workdir):
    tool = fake_tools.replay("memtester", FIXTURES, "killed", hang=True)
    result = await run_stage(
        "Memtester", registry=registry, params={"mib": 64}, workdir=stage_workdir, timeout_s=1
    )
    assert_verdict(result, "failed", reason="stage timed out after 1s")
    [pid] = tool.pids()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_request_larger_than_the_machine_is_capped(fake_tools, registry, stage_workdir):
    tool = fake_tools.replay("memtester", FIXTURES, "pass-4m-2loops")
    result = await run(registry, stage_workdir, mib=10**9, loops=2)
    [argv] = tool.calls()
    tested = int(argv[0].rstrip("M"))
    available = memtester.parse_meminfo(Path("/proc/meminfo").read_text())["MemAvailable"] // 1024
    assert tested < available - 512
    assert result.context.summary["plan"]["capped"] is True
    assert any(line.level == "warning" and "can be locked safely" in line.message for line in result.lines)


@pytest.mark.parametrize(
    "params, words",
    [
        ({"mib": "lots"}, "parameter 'mib' must be a whole number or \"auto\""),
        ({"loops": 0}, "parameter 'loops' must be at least 1"),
        ({"loops": 1.5}, "parameter 'loops' must be a whole number"),
        ({"mib": 4, "max_fraction": 2}, "max_fraction must be in (0, 1]"),
        ({"mib": 1, "min_mib": 4}, "below the minimum of 4 MiB"),
    ],
)
async def test_bad_parameters_fail_with_the_parameter_named(fake_tools, registry, stage_workdir, params, words):
    tool = fake_tools.replay("memtester", FIXTURES, "pass-4m-2loops")
    result = await run(registry, stage_workdir, **params)
    assert_verdict(result, "failed", reason=words)
    assert tool.calls() == []  # nothing ran


async def test_tool_not_installed(registry, stage_workdir, monkeypatch):
    monkeypatch.setattr(memtester, "TOOL", "memtester-not-installed-here")
    result = await run(registry, stage_workdir, mib=4, oom_guard=False)
    assert_verdict(result, "failed", reason="memtester-not-installed-here is not installed")


async def test_real_memtester(registry, stage_workdir):
    """The real binary (Debian package ``memtester``), 4 MiB, one loop: about 1 s."""
    assert shutil.which("memtester", path=os.environ["PATH"] + ":/usr/sbin"), (
        "memtester is not installed: apt-get install memtester"
    )
    result = await run(registry, stage_workdir, mib=4, loops=1)
    assert_verdict(result, "passed")
    assert_measured(result, "memtester", "coverage_pct", value=100, passes=True)
    assert_measured(result, "memtester", "errors", value=0, passes=True)
    assert result.result.substeps[0].summary["version"].startswith("4.")
