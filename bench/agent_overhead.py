"""Footprint of the agent while a stage idles: CPU % of one core and RSS.

Target (issue 4): the whole agent, sidecar on, under 1 % of one core and 60 MB RSS
while a stage sleeps.

It starts a child process that is the agent — every installed plugin loaded through
entry points, the sensor sidecar at 1 Hz — running one stage that sleeps
``--seconds`` (default 60), and samples the child's ``/proc/<pid>/stat`` (utime +
stime) and ``/proc/<pid>/status`` (VmRSS, VmHWM) once a second. The first
``--warmup`` seconds (imports, plugin loading) are left out of the CPU figure.

Two modes (both by default): local (``run_local``: sidecar, thresholds, progress
printing, no network) and connect (``run_connected`` against a real ``vetting serve``
on SQLite in a temporary directory: heartbeat every 10 s, the spool, one HTTP sensor
batch a second; the stage is the test plugin's Sleeper).

Sensors: this machine's own (hwmon, throttle counters, BMC, NVML) when it has any;
on a VM without any, ``--fake-hwmon N`` (default 48 when none are found) builds a
sysfs-shaped tree of N channels so the sidecar does comparable work.

Baseline, measured in the same run: an idle Python interpreter that imported the same
modules and sleeps; the ratio says what the agent's loops cost on top.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")

CHILD_LOCAL = textwrap.dedent(
    """
    import sys, anyio
    sys.path.insert(0, {repo!r})
    from vetting_core import StageSpec, ProfileSpec, hookimpl
    from vetting_core.plugins import load_registry
    from vetting_agent.cli import configure_logging
    from vetting_agent.local import LocalOptions, run_local
    from vetting_agent.sidecar import HwmonSource, default_sources

    async def sleeper(ctx):
        total = {seconds}
        t = 0.0
        while t < total:
            await anyio.sleep(1.0)
            t += 1.0
            ctx.progress(t / total, "idling")

    class P:
        @hookimpl
        def vetting_stages(self):
            return [StageSpec(name="Idle", run=sleeper, order=5000, profiles=("quick",), timeout_s=3600)]

    configure_logging("warning")
    reg = load_registry(plugins=[("bench-idle", P())])
    fake = {fake!r}
    sources = [HwmonSource(fake)] if fake else default_sources()
    print("READY", flush=True)
    anyio.run(run_local, reg, LocalOptions(profile="quick", stages=["Idle"], out_dir={out!r},
              sidecar_sources=sources, progress_stream=open("/dev/null", "w")))
    """
)

CHILD_CONNECT = textwrap.dedent(
    """
    import sys, anyio
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from vetting_core.plugins import load_registry
    from vetting_agent.cli import configure_logging
    from vetting_agent.cmdline import RunCoordinates
    from vetting_agent.session import AgentOptions, run_connected
    from vetting_agent.sidecar import HwmonSource, default_sources
    from tests.agent import chatter_plugin

    configure_logging("warning")
    reg = load_registry(plugins=[("agent-chatter", chatter_plugin)])
    fake = {fake!r}
    sources = [HwmonSource(fake)] if fake else default_sources()
    print("READY", flush=True)
    anyio.run(run_connected, RunCoordinates(server={url!r}, run_id={run_id}, token={token!r}), reg,
              AgentOptions(spool_dir=Path({spool!r}), authorized_keys=Path({spool!r}) / "keys", sidecar_sources=sources))
    """
)

CHILD_BASELINE = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {repo!r})
    import anyio, httpx, msgspec, structlog, vetting_core
    from vetting_core.plugins import load_registry
    import vetting_agent.session, vetting_agent.local
    from vetting_agent.cli import configure_logging
    configure_logging("warning")
    reg = load_registry()
    print("READY", flush=True)
    anyio.run(anyio.sleep, {seconds})
    """
)


def make_fake_hwmon(root: Path, channels: int) -> None:
    per_chip = 16
    for chip in range((channels + per_chip - 1) // per_chip):
        d = root / f"hwmon{chip}"
        d.mkdir(parents=True)
        (d / "name").write_text(f"bench{chip}\n")
        for i in range(min(per_chip, channels - chip * per_chip)):
            kind = ("temp", "fan", "in", "power")[i % 4]
            value = {"temp": 45000, "fan": 1200, "in": 1100, "power": 95000000}[kind]
            (d / f"{kind}{i + 1}_input").write_text(f"{value}\n")


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_mem_mb(pid: int) -> tuple[float, float]:
    rss = hwm = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) / 1024
    return rss, hwm


def measure(script: str, seconds: float, warmup: float, label: str) -> dict[str, float]:
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = ""
    for _ in range(200):  # unconfigured loggers may print before READY
        line = proc.stdout.readline()
        if "READY" in line or not line:
            break
    if "READY" not in line:
        proc.kill()
        raise SystemExit(f"{label}: child did not start: {line!r} {proc.stderr.read()[-2000:] if proc.stderr else ''}")
    time.sleep(warmup)
    cpu0, t0 = proc_cpu_s(proc.pid), time.monotonic()
    rss_samples = []
    end = t0 + seconds - warmup - 2
    while time.monotonic() < end and proc.poll() is None:
        time.sleep(1.0)
        rss_samples.append(proc_mem_mb(proc.pid)[0])
    cpu1, t1 = proc_cpu_s(proc.pid), time.monotonic()
    _, hwm = proc_mem_mb(proc.pid)
    proc.kill()
    proc.wait()
    return {
        "cpu_pct": 100.0 * (cpu1 - cpu0) / (t1 - t0),
        "rss_mb": statistics.median(rss_samples) if rss_samples else float("nan"),
        "hwm_mb": hwm,
        "window_s": t1 - t0,
    }


def measure_connected(tmp: Path, seconds: float, warmup: float, fake: str | None) -> dict[str, float]:
    """The agent against a real ``vetting serve`` (SQLite in ``tmp``), default heartbeat
    interval (10 s); the stage is the test plugin's Sleeper."""
    from tests.agent.support import plugin_env
    from tests.support.server import ServerProcess

    with ServerProcess(tmp / "server", env=plugin_env(tmp)) as srv:
        host = srv.create_host("bench", "02:00:00:00:aa:01", spec_yaml=f"params:\n  Sleeper: {{sleep_s: {seconds}}}\n")
        run_id, token = srv.start_run(host["id"], stages=["Sleeper"])
        script = CHILD_CONNECT.format(repo=str(REPO), fake=fake, url=srv.base_url, run_id=run_id, token=token,
                                      spool=str(tmp / "spool"))
        return measure(script, seconds, warmup, "agent (connect)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="how long the stage idles")
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--fake-hwmon", type=int, default=None, help="fake hwmon channels (default 48 when the machine has none)")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--mode", choices=["local", "connect", "both"], default="both",
                    help="local mode, connected to a real server (heartbeat every 10 s, spool, HTTP), or both")
    args = ap.parse_args()

    sys.path.insert(0, str(REPO))
    from vetting_agent.sidecar import default_sources

    real = default_sources()
    with tempfile.TemporaryDirectory(prefix="vetting-bench-") as tmp:
        fake = None
        channels = args.fake_hwmon
        if channels is None and not real:
            channels = 48
        if channels:
            fake = str(Path(tmp, "hwmon"))
            make_fake_hwmon(Path(fake), channels)
            sensors = f"{channels} fake hwmon channels (this machine has no sensors of its own)" if not real else f"{channels} fake hwmon channels"
        else:
            sensors = ", ".join(type(s).__name__ for s in real)
        for s in real:
            s.close()
        print(f"agent overhead: one stage idling {args.seconds:.0f}s, sidecar at 1 Hz on {sensors}; "
              f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
        results = {}
        if args.mode in ("local", "both"):
            results["local"] = measure(
                CHILD_LOCAL.format(repo=str(REPO), seconds=args.seconds, fake=fake, out=str(Path(tmp, "out"))),
                args.seconds, args.warmup, "agent",
            )
        if args.mode in ("connect", "both"):
            results["connect"] = measure_connected(Path(tmp), args.seconds, args.warmup, fake)
        for mode, r in results.items():
            print(f"agent ({mode} mode, sidecar on): CPU {r['cpu_pct']:.3f} % of one core over {r['window_s']:.0f}s, "
                  f"RSS median {r['rss_mb']:.1f} MB, peak {r['hwm_mb']:.1f} MB")
        agent = max(results.values(), key=lambda r: r["cpu_pct"])
        if not args.no_baseline:
            base = measure(CHILD_BASELINE.format(repo=str(REPO), seconds=args.seconds), args.seconds, args.warmup, "baseline")
            print(f"baseline (same imports, idle interpreter): CPU {base['cpu_pct']:.3f} %, "
                  f"RSS median {base['rss_mb']:.1f} MB, peak {base['hwm_mb']:.1f} MB")
            print(f"ratio agent/baseline: CPU +{agent['cpu_pct'] - base['cpu_pct']:.3f} points, "
                  f"RSS ×{agent['rss_mb'] / base['rss_mb']:.2f}")
        ok = all(r["cpu_pct"] < 1.0 and r["rss_mb"] < 60.0 for r in results.values())
        print(f"target (< 1 % CPU, < 60 MB RSS): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
