"""execute_stage verdict rules, the stage context, and tools run as real processes."""

from __future__ import annotations

import hashlib
import os
import sys
import time

import anyio
import pytest

from vetting_core import (
    MemorySink,
    ProbeSpec,
    StageCannotRun,
    StageContext,
    StageFailed,
    StageHold,
    StageSkipped,
    StageSpec,
    execute_stage,
    hookimpl,
)
from vetting_core.context import build_context, stage_workdir
from vetting_core.plugins import load_registry
from vetting_core.model import Verdict
from vetting_core import tools
from vetting_core.tools import ToolNotFound, run_tool, stream_tool, which

pytestmark = pytest.mark.anyio


def ctx_for(tmp_path, **kw):
    return StageContext(stage="T", sink=MemorySink(), workdir=tmp_path / "work", **kw)


def spec(run, **kw):
    return StageSpec(name="T", order=1, run=run, **kw)


async def test_passed_with_measurements_and_logs(tmp_path):
    async def run(ctx):
        ctx.log("starting")
        ctx.measure("temp", "cpu/package0", 61.5, "C")
        ctx.measure("link", "eth0/state", None, text="up")
        ctx.progress(0.5, "half way")
        ctx.summary["bogo_ops"] = 1234

    ctx = ctx_for(tmp_path)
    res = await execute_stage(spec(run), ctx)
    assert (res.stage, res.verdict, res.reason, res.hold) == ("T", Verdict.passed, None, False)
    assert res.summary == {"bogo_ops": 1234}
    assert res.started_at <= res.completed_at
    sink = ctx.sink
    assert [(s.kind, s.key, s.value, s.text) for s in sink.samples] == [
        ("temp", "cpu/package0", 61.5, None), ("link", "eth0/state", None, "up"),
    ]
    assert sink.samples[0].stage == "T" and sink.samples[0].unit == "C"
    assert [line.message for line in sink.lines] == ["starting"]
    assert sink.progress_updates == [("T", 0.5, "half way")]


@pytest.mark.parametrize(
    ("exc", "verdict", "hold"),
    [
        (StageFailed("3 DIMMs missing"), Verdict.failed, False),
        (StageSkipped("no NVIDIA GPU found"), Verdict.skipped, False),
        (StageHold("filesystem signatures on /dev/sdb", found={"sdb": ["ext4"]}), Verdict.hold, True),
    ],
)
async def test_verdict_exceptions(tmp_path, exc, verdict, hold):
    async def run(ctx):
        raise exc

    ctx = ctx_for(tmp_path)
    res = await execute_stage(spec(run), ctx)
    assert (res.verdict, res.reason, res.hold) == (verdict, str(exc), hold)
    if hold:
        assert res.summary["found"] == {"sdb": ["ext4"]}
    assert ctx.sink.lines[-1].message == f"{verdict.value}: {exc}"


async def test_a_missing_tool_or_permission_is_cannot_run_not_failed(tmp_path, monkeypatch):
    """The test could not run here: no finding about the machine, and the reason says
    how to fix it."""

    async def missing_tool(ctx):
        which("vetting-no-such-tool")

    async def real_run_tool(ctx):
        await ctx.run_tool(["/nonexistent/bin/stress-ng", "--version"])

    async def no_permission(ctx):
        (tmp_path / "locked").mkdir(mode=0o000)
        if os.geteuid() == 0:  # root reads anything: raise what an unprivileged agent gets
            raise PermissionError(13, "Permission denied", "/dev/sda")
        os.listdir(tmp_path / "locked")

    async def explicit(ctx):
        raise StageCannotRun("no /dev/ipmi0 and the ipmi_si module is not loaded", cause="unsupported")

    cases = [
        (missing_tool, "vetting-no-such-tool is not installed (not found on PATH)", "tool_missing", "vetting-no-such-tool"),
        (real_run_tool, "/nonexistent/bin/stress-ng does not exist or is not executable", "tool_missing", "stress-ng"),
        (no_permission, "no permission: ", "no_permission", None),
        (explicit, "no /dev/ipmi0 and the ipmi_si module is not loaded", "unsupported", None),
    ]
    for i, (run, reason, cause, tool) in enumerate(cases):
        ctx = ctx_for(tmp_path / str(i))
        res = await execute_stage(spec(run), ctx)
        assert res.verdict is Verdict.cannot_run, (run.__name__, res.reason)
        assert res.reason.startswith(reason), res.reason
        assert res.summary["cannot_run"] == {"cause": cause, "tool": tool}
        assert ctx.sink.lines[-1].message.startswith("could not run: ")
        assert not any("Traceback" in line.message for line in ctx.sink.lines)
    # the reason names the Debian package of a tool the built-in stages run
    monkeypatch.setitem(tools.DEBIAN_PACKAGES, "vetting-no-such-tool", "vetting-tools")
    res = await execute_stage(spec(missing_tool), ctx_for(tmp_path / "hint"))
    assert res.reason == "vetting-no-such-tool is not installed (not found on PATH; Debian package vetting-tools)"


def test_stops_run_and_completed_result():
    from vetting_core.model import completed_result, stops_run

    assert stops_run(Verdict.failed, live_image=False) and stops_run(Verdict.hold, live_image=False)
    assert stops_run(Verdict.cannot_run, live_image=True)
    assert not stops_run(Verdict.cannot_run, live_image=False)
    assert not stops_run(Verdict.skipped, live_image=True) and not stops_run(Verdict.passed, live_image=True)
    assert completed_result(["passed", "skipped"]) == "pass"
    assert completed_result([Verdict.passed, "cannot_run"]) == "incomplete"
    assert Verdict.cannot_run.terminal and Verdict.cannot_run.label == "could not run"


async def test_progress_reaches_the_sink_at_least_every_5_s_with_an_estimate(tmp_path, monkeypatch):
    """A stage that reports nothing while it works still shows a live percent: estimated
    from its duration_s (or expect_duration), repeated at least every PROGRESS_EVERY_S;
    once it reports fractions of its own, those are what the sink gets."""
    from vetting_core import context

    monkeypatch.setattr(context, "PROGRESS_TICK_S", 0.05)
    monkeypatch.setattr(context, "PROGRESS_EVERY_S", 0.25)

    async def silent(ctx):
        ctx.progress(0.0, "stress-ng cpu for 1s")
        await anyio.sleep(0.6)

    ctx = ctx_for(tmp_path, params={"duration_s": 1.0})
    await execute_stage(spec(silent), ctx)
    ups = ctx.sink.progress_updates
    fractions = [f for _, f, _ in ups]
    assert fractions[0] == 0.0 and 0.35 < fractions[-1] < 0.75, ups
    assert fractions == sorted(fractions) and len(ups) >= 6
    assert all(m == "stress-ng cpu for 1s" for _, _, m in ups)

    async def own(ctx):
        ctx.expect_duration(100.0)
        await anyio.sleep(0.15)
        ctx.progress(0.5, "half")  # its own figure: no more estimates
        await anyio.sleep(0.6)

    ctx = ctx_for(tmp_path)
    await execute_stage(spec(own), ctx)
    ups = ctx.sink.progress_updates
    after = ups[ups.index(("T", 0.5, "half")):]
    assert set(after) == {("T", 0.5, "half")} and len(after) >= 2  # repeated, never re-estimated
    assert all(f < 0.01 for _, f, _ in ups[: ups.index(("T", 0.5, "half"))])


async def test_crash_is_failed_with_traceback_in_log(tmp_path):
    async def run(ctx):
        {}["missing-key"]

    ctx = ctx_for(tmp_path)
    res = await execute_stage(spec(run), ctx)
    assert res.verdict is Verdict.failed
    assert res.reason == "stage crashed: KeyError: 'missing-key'"
    tb = [line for line in ctx.sink.lines if line.level == "error" and "Traceback" in line.message]
    assert tb and 'test_context.py' in tb[0].message and "KeyError" in tb[0].message


async def test_timeout_fails_the_stage_and_the_running_substep(tmp_path):
    async def run(ctx):
        async with ctx.substep("sda"):
            await anyio.sleep(30)

    ctx = ctx_for(tmp_path)
    t0 = time.monotonic()
    res = await execute_stage(spec(run, timeout_s=0.2), ctx)
    assert time.monotonic() - t0 < 5
    assert (res.verdict, res.reason) == (Verdict.failed, "stage timed out after 0.2s")
    assert res.substeps[0].state is Verdict.failed and res.substeps[0].reason == res.reason
    # the plan's timeout overrides the spec's
    res = await execute_stage(spec(run, timeout_s=3600), ctx_for(tmp_path), timeout_s=0.1)
    assert res.reason == "stage timed out after 0.1s"


async def test_timeout_error_raised_by_the_stage_is_a_crash_not_a_timeout(tmp_path):
    async def run(ctx):
        raise TimeoutError("BMC did not answer")

    res = await execute_stage(spec(run, timeout_s=60), ctx_for(tmp_path))
    assert res.reason == "stage crashed: TimeoutError: BMC did not answer"


async def test_failed_substep_fails_the_stage(tmp_path):
    async def run(ctx):
        async with ctx.substep("sda") as s:
            s.summary["mbps"] = 500
        async with ctx.substep("sdb") as s:
            s.fail("read 40 MB/s, expected ≥ 150")
        async with ctx.substep("sdc") as s:
            s.skip("USB stick")
        with pytest.raises(ValueError):
            async with ctx.substep("sdd"):
                raise ValueError("smartctl printed garbage")

    res = await execute_stage(spec(run), ctx_for(tmp_path))
    assert res.verdict is Verdict.failed
    assert res.reason == "sdb: read 40 MB/s, expected ≥ 150; sdd: ValueError: smartctl printed garbage"
    assert [(s.name, s.state, s.ordinal) for s in res.substeps] == [
        ("sda", Verdict.passed, 0), ("sdb", Verdict.failed, 1), ("sdc", Verdict.skipped, 2), ("sdd", Verdict.failed, 3),
    ]
    assert res.substeps[0].summary == {"mbps": 500}
    assert all(s.completed_at is not None for s in res.substeps)


async def test_applies_returns_reason_then_skipped_without_running(tmp_path):
    ran = []

    async def run(ctx):
        ran.append(True)

    def applies(inventory):
        return None if inventory.get("gpus") else "no NVIDIA GPU found"

    res = await execute_stage(spec(run, applies=applies), ctx_for(tmp_path, inventory={"gpus": []}))
    assert (res.verdict, res.reason) == (Verdict.skipped, "no NVIDIA GPU found") and not ran
    res = await execute_stage(spec(run, applies=applies), ctx_for(tmp_path, inventory={"gpus": [{"index": 0}]}))
    assert res.verdict is Verdict.passed and ran


async def test_applies_that_crashes_fails_the_stage(tmp_path):
    async def run(ctx):
        raise AssertionError("must not run")

    ctx = ctx_for(tmp_path)
    res = await execute_stage(spec(run, applies=lambda inv: inv["gpus"][0]), ctx)
    assert res.verdict is Verdict.failed
    assert res.reason.startswith("applicability check crashed: KeyError")
    assert any("Traceback" in line.message for line in ctx.sink.lines)


async def test_cancellation_from_outside_propagates(tmp_path):
    async def run(ctx):
        await anyio.sleep(30)

    with anyio.move_on_after(0.1) as scope:
        await execute_stage(spec(run), ctx_for(tmp_path))
        pytest.fail("execute_stage swallowed the cancellation")
    assert scope.cancelled_caught


async def test_artifacts_are_hashed(tmp_path):
    data = os.urandom(3 << 20)  # larger than the 1 MiB read block
    raw = tmp_path / "fio.json"
    raw.write_bytes(data)

    async def run(ctx):
        ctx.artifact("fio-json", raw)
        ctx.save_text("smartctl", "smartctl-sda.txt", "SMART overall-health: PASSED\n")

    ctx = ctx_for(tmp_path)
    res = await execute_stage(spec(run), ctx)
    a, b = res.artifacts
    assert (a.kind, a.sha256, a.size_bytes, a.stage) == ("fio-json", hashlib.sha256(data).hexdigest(), len(data), "T")
    assert a.path == str(raw.resolve())
    text = b"SMART overall-health: PASSED\n"
    assert (b.sha256, b.size_bytes) == (hashlib.sha256(text).hexdigest(), len(text))
    assert (tmp_path / "work" / "smartctl-sda.txt").read_bytes() == text


async def test_context_run_tool_logs_and_keeps_artifact(tmp_path):
    async def run(ctx):
        r = await ctx.run_tool(["sh", "-c", "echo 'PASSED'; exit 4"], artifact="selftest")
        ctx.summary["rc"] = r.returncode
        r = await ctx.run_tool(["sh", "-c", "echo one; echo two"], stream=True)

    ctx = ctx_for(tmp_path)
    res = await execute_stage(spec(run), ctx)
    assert res.summary["rc"] == 4  # the exit code is returned, not judged
    assert res.artifacts[0].kind == "selftest"
    assert (tmp_path / "work" / "selftest.txt").read_text() == "PASSED\n"
    messages = [line.message for line in ctx.sink.lines]
    assert any(m.startswith("$ ") and "echo 'PASSED'" in m for m in messages)
    assert "one" in messages and "two" in messages


# -- tools: real processes ------------------------------------------------------


async def test_run_tool_exit_code_and_streams():
    r = await run_tool(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (r.returncode, r.stdout, r.stderr, r.timed_out) == (3, "out\n", "err\n", False)
    assert r.argv[0].endswith("/sh") and os.path.isabs(r.argv[0])


async def test_run_tool_has_no_stdin_and_c_locale():
    r = await run_tool(["sh", "-c", "cat; echo LC_ALL=$LC_ALL LANG=$LANG"], env={"EXTRA": "1"})
    assert r.stdout == "LC_ALL=C LANG=C\n"  # cat read an empty stdin (/dev/null), no hang
    r = await run_tool(["env"])
    assert "LC_ALL=C" in r.stdout.splitlines()


async def test_run_tool_timeout_kills_the_process_group(tmp_path):
    pidfile = tmp_path / "child.pid"
    t0 = time.monotonic()
    r = await run_tool(["sh", "-c", f"sleep 30 & echo $! > {pidfile}; sleep 30"], timeout=0.5)
    elapsed = time.monotonic() - t0
    assert r.timed_out and r.returncode is None
    assert 0.4 < elapsed < 5
    child = int(pidfile.read_text())
    await anyio.sleep(0.1)
    # the background child is gone too (or a zombie awaiting its reaper)
    try:
        state = open(f"/proc/{child}/stat").read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        state = "gone"
    assert state in ("gone", "Z")


async def test_plain_sleep_timeout():
    r = await run_tool(["sleep", "30"], timeout=0.5)
    assert r.timed_out and r.duration_s < 5


async def test_missing_binary():
    with pytest.raises(ToolNotFound, match="no-such-tool-xyz is not installed"):
        await run_tool(["no-such-tool-xyz", "--version"])
    with pytest.raises(ToolNotFound, match="/nonexistent/smartctl does not exist"):
        await run_tool(["/nonexistent/smartctl"])
    with pytest.raises(ToolNotFound):
        await stream_tool(["no-such-tool-xyz"], lambda s, line: None)


async def test_garbage_and_binary_output_is_decoded(tmp_path):
    blob = bytes(range(256)) * 64 + b"\xff\xfe\xc3\x28 tail\n"
    f = tmp_path / "blob.bin"
    f.write_bytes(blob)
    r = await run_tool(["cat", str(f)])
    assert r.returncode == 0 and "\ufffd" in r.stdout and r.stdout.endswith(" tail\n")
    lines = []
    r2 = await stream_tool(["cat", str(f)], lambda s, line: lines.append(line))
    assert r2.stdout == r.stdout  # stream_tool returns the exact same text
    assert lines[-1].endswith(" tail")


async def test_output_cap_keeps_the_process_draining():
    r = await run_tool(["head", "-c", "5000000", "/dev/zero"], max_output_bytes=1000)
    assert r.returncode == 0 and len(r.stdout) == 1000 and r.truncated
    r = await run_tool(["head", "-c", "1000", "/dev/zero"], max_output_bytes=1000)
    assert len(r.stdout) == 1000 and not r.truncated


async def test_stream_tool_delivers_lines_as_they_arrive():
    seen: list[tuple[str, str, float]] = []
    t0 = time.monotonic()

    async def on_line(stream, line):
        seen.append((stream, line, time.monotonic() - t0))

    script = "echo first; sleep 0.5; echo second; echo warn >&2; printf 'no newline'"
    r = await stream_tool([sys.executable, "-u", "-c", f"import os; os.system({script!r})"], on_line)
    assert r.returncode == 0
    assert [(s, line) for s, line, _ in seen if s == "stdout"] == [
        ("stdout", "first"), ("stdout", "second"), ("stdout", "no newline"),
    ]
    assert ("stderr", "warn") in [(s, line) for s, line, _ in seen]
    first_at = next(t for s, line, t in seen if line == "first")
    second_at = next(t for s, line, t in seen if line == "second")
    assert second_at - first_at >= 0.3  # "first" was delivered before the tool finished


async def test_stream_tool_long_line_without_newline():
    lines = []
    r = await stream_tool(["head", "-c", "300000", "/dev/zero"], lambda s, line: lines.append(len(line)))
    assert sum(lines) == 300000 and max(lines) <= 64 << 10
    assert len(r.stdout) == 300000


async def test_stream_tool_timeout():
    lines = []
    r = await stream_tool(["sh", "-c", "echo started; sleep 30"], lambda s, line: lines.append(line), timeout=0.5)
    assert r.timed_out and lines == ["started"]



# -- build_context: the one builder the agent and the test kit share --------------------
class _ProbePlugin:
    """A plugin registering one inventory probe."""

    @staticmethod
    async def collect():
        return {"tpm": {"version": "2"}}

    @hookimpl
    def vetting_probes(self):
        return [ProbeSpec(name="tpm", collect=self.collect, sections=("tpm",))]


def test_build_context_hands_over_the_registrys_probes_and_copies_inputs(tmp_path):
    registry = load_registry(entry_points=False, plugins=[("probe", _ProbePlugin())], environ={})
    params, inventory, flags = {"n": 1}, {"cpu": {}}, {"wipe": True}
    ctx = build_context(
        "InventoryCheck", sink=MemorySink(), workdir=tmp_path, params=params, registry=registry,
        run_id=7, inventory=inventory, override_flags=flags, non_destructive=False,
    )
    assert [p.name for p in ctx.probes] == ["tpm"]
    assert (ctx.stage, ctx.run_id, ctx.non_destructive, ctx.workdir) == ("InventoryCheck", 7, False, tmp_path)
    params["n"], inventory["gpu"], flags["wipe"] = 2, {}, False  # the stage sees a copy
    assert (ctx.params, ctx.inventory, ctx.override_flags) == ({"n": 1}, {"cpu": {}}, {"wipe": True})


def test_build_context_without_a_registry_leaves_probes_to_the_stage(tmp_path):
    ctx = build_context("InventoryCheck", sink=MemorySink(), workdir=tmp_path)
    assert ctx.probes is None and ctx.params == {} and ctx.profile == "quick" and ctx.non_destructive


def test_stage_workdir_reads_like_the_plan(tmp_path):
    assert stage_workdir(tmp_path, "SMART", 3) == tmp_path / "03-SMART"
