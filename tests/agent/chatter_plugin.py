"""A test-only plugin: cheap stages that produce a known amount of output.

``Chatter`` emits ``samples`` measurements and ``lines`` log lines spread over
``duration_s`` seconds (so a test can cut the network or kill the server while it
streams). ``Judged`` emits one sample of ``value`` (a threshold in the test's plan can
breach it). ``Faulty`` fails. ``NoTool`` cannot run (its tool is not installed). Registered by hand into the registry a test passes to the
agent; never installed as an entry point.
"""

from __future__ import annotations

import anyio

from vetting_core import ProfileSpec, StageFailed, StageSkipped, StageSpec, ThresholdRule, hookimpl


async def chatter(ctx) -> None:
    samples = int(ctx.params.get("samples", 50))
    lines = int(ctx.params.get("lines", 20))
    duration = float(ctx.params.get("duration_s", 1.0))
    steps = max(samples, lines, 1)
    for i in range(steps):
        if i < samples:
            ctx.measure("chatter", f"series{i % 3}", float(i), "n")
        if i < lines:
            ctx.log(f"chatter line {i}")
        ctx.progress((i + 1) / steps, f"step {i + 1}/{steps}")
        await anyio.sleep(duration / steps)
    ctx.summary["samples"] = samples
    ctx.summary["lines"] = lines


async def judged(ctx) -> None:
    ctx.measure("judged", "value", float(ctx.params.get("value", 1.0)), "u")
    ctx.log("judged one sample")


async def faulty(ctx) -> None:
    ctx.log("about to fail")
    raise StageFailed(str(ctx.params.get("reason", "the faulty stage failed on purpose")))


async def no_tool(ctx) -> None:
    """Runs a tool that is not installed: the stage could not run (not a failure)."""
    await ctx.run_tool(["vetting-test-no-such-tool", "--version"])


async def needs_gpu(ctx) -> None:  # never runs: applies() says no
    raise AssertionError("must be skipped")


async def records_flags(ctx) -> None:
    ctx.summary["override_flags"] = dict(ctx.override_flags)
    ctx.log(f"override flags: {sorted(ctx.override_flags)}")
    if not ctx.override_flags.get("wipe"):
        raise StageFailed("no wipe override armed")


async def sleeper(ctx) -> None:
    total = float(ctx.params.get("sleep_s", 60.0))
    step = 1.0
    elapsed = 0.0
    while elapsed < total:
        await anyio.sleep(min(step, total - elapsed))
        elapsed += step
        ctx.progress(min(1.0, elapsed / total), "idling")


async def inventory_echo(ctx) -> None:
    """Shows which inventory the agent handed over (collected by InventoryCheck)."""
    ctx.summary["inventory_sections"] = sorted(ctx.inventory)
    ctx.summary["cpu_threads"] = (ctx.inventory.get("cpu") or {}).get("threads")


async def wiper(ctx) -> None:
    """A destructive stage that honours ``ctx.non_destructive`` like real ones must."""
    ctx.summary["non_destructive"] = ctx.non_destructive
    if not ctx.non_destructive:
        ctx.log("would wipe the disks now")
        return
    raise StageSkipped("non-destructive run: nothing wiped")


STAGES = [
    StageSpec(name="Chatter", run=chatter, order=310, profiles=("quick", "agenttest"), timeout_s=120),
    StageSpec(
        name="Judged",
        run=judged,
        order=320,
        profiles=("quick", "agenttest"),
        thresholds=(ThresholdRule(kind="judged", key="value", op="lte", threshold=10.0),),
    ),
    StageSpec(name="Faulty", run=faulty, order=330, profiles=("quick", "agenttest")),
    StageSpec(name="NoTool", run=no_tool, order=305, profiles=("agenttest",)),
    StageSpec(name="NeedsGpu", run=needs_gpu, order=340, profiles=("quick", "agenttest"),
              applies=lambda inv: None if inv.get("gpus") else "no GPU in the inventory"),
    StageSpec(name="Flags", run=records_flags, order=350, profiles=("quick", "agenttest")),
    StageSpec(name="Wiper", run=wiper, order=370, profiles=("agenttest",), destructive=True),
    StageSpec(name="InvEcho", run=inventory_echo, order=365, profiles=("quick", "agenttest")),
    StageSpec(name="Sleeper", run=sleeper, order=360, profiles=("quick", "agenttest"), timeout_s=3600),
]


@hookimpl
def vetting_stages():
    return list(STAGES)


@hookimpl
def vetting_profiles():
    return [ProfileSpec(name="agenttest", description="cheap stages for the agent tests")]
