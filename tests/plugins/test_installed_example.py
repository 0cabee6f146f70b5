"""The example plugin really installed next to Vetting (``pip install -e plugins-example``,
done by ``./dev``), seen through the real CLIs in subprocesses."""

import json
import subprocess
from importlib import metadata

import pytest

from .distributions import BIN, env_with, throwaway_site

EXAMPLE_HEADER = "example  (vetting-plugin-example 0.1.0; vetting_example.plugin)"


def run(argv, env, timeout=60, cwd=None):
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    return proc.returncode, proc.stdout, proc.stderr


def block(listing: str, header_prefix: str) -> list[str]:
    """The lines of one plugin in a `plugins list` output."""
    lines = listing.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_prefix))
    out = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith("    "):
            break
        out.append(line.strip())
    return out


def test_installed_as_its_own_distribution():
    try:
        dist = metadata.distribution("vetting-plugin-example")
    except metadata.PackageNotFoundError:
        pytest.fail("vetting-plugin-example is not installed: pip install -e plugins-example (./dev does it)")
    [ep] = [e for e in dist.entry_points if e.group == "vetting"]
    assert (ep.name, ep.value) == ("example", "vetting_example.plugin")


def test_vetting_plugins_list_shows_it(tmp_path):
    rc, out, err = run([str(BIN / "vetting"), "plugins", "list"], env_with(), cwd=tmp_path)
    assert rc == 0, err
    assert block(out, "example  (") == [
        EXAMPLE_HEADER,
        "notifiers: gotify",
        "operators: between",
        "probes: platform",
        "profiles: quick-memtest, deep (fragment)",
        "report sections: memtester",
        "stages: Memtester",
    ]
    assert block(out, "core  (")[0].startswith("core  (vetting ")


def test_blocked_by_env_it_disappears_and_vetting_still_runs(tmp_path):
    env = env_with(VETTING_DISABLE_PLUGINS="example")
    rc, out, err = run([str(BIN / "vetting"), "plugins", "list"], env, cwd=tmp_path)
    assert rc == 0, err
    assert "example  blocked" in out.splitlines()
    assert "Memtester" not in out and "gotify" not in out and EXAMPLE_HEADER not in out
    assert "core  (vetting " in out
    # the agent still runs a pipeline, and the example's probe is gone from the inventory
    rc, out, err = run(
        [str(BIN / "vetting-agent"), "local", "--profile", "quick", "--stages", "InventoryCheck",
         "--out", str(tmp_path / "out"), "--no-sensors"],
        env, cwd=tmp_path,
    )
    assert rc == 0, out + err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["verdict"] == "passed"
    assert "boot" not in report["inventory"] and "kernel" not in report["inventory"]


def test_blocked_by_config_file(tmp_path):
    cfg = tmp_path / "vetting.yaml"
    cfg.write_text("plugins:\n  disable: [example]\n")
    rc, out, err = run([str(BIN / "vetting"), "--config", str(cfg), "plugins", "list"], env_with(), cwd=tmp_path)
    assert rc == 0, err
    assert "example  blocked" in out.splitlines() and "Memtester" not in out


def test_broken_plugins_are_named_and_skipped(tmp_path):
    site = throwaway_site(tmp_path / "site")
    rc, out, err = run([str(BIN / "vetting"), "plugins", "list"], env_with(site), cwd=tmp_path)
    assert rc == 0, err
    lines = out.splitlines()
    assert "broken_import  BROKEN in import: RuntimeError: boom at import (skipped)" in lines
    assert "broken_hook  BROKEN in vetting_stages: ValueError: no stages today (skipped)" in lines
    # a plugin that raised in one hook is skipped as a whole
    assert "never-seen" not in out
    # everything else still loads, the crashy plugin included
    assert EXAMPLE_HEADER in lines
    assert block(out, "crashy  (") == [
        "crashy  (vetting-crashy 0.1; vetting_crashy)",
        "profiles: crash-then-memtest",
        "stages: Crashy",
    ]


def test_probe_stage_and_report_section_in_a_local_agent_run(tmp_path):
    """The agent (local mode) runs the example's stage from a plugin profile, its probe
    fills the inventory, its report section is in the report."""
    site = throwaway_site(tmp_path / "site")
    out_dir = tmp_path / "out"
    rc, out, err = run(
        [str(BIN / "vetting-agent"), "local", "--profile", "crash-then-memtest", "--stages",
         "InventoryCheck,Memtester", "--out", str(out_dir), "--no-sensors"],
        env_with(site), cwd=tmp_path, timeout=120,
    )
    assert rc == 0, out + err
    report = json.loads((out_dir / "report.json").read_text())
    stages = {s["name"]: s for s in report["stages"]}
    assert stages["Memtester"]["verdict"] == "passed", stages["Memtester"]
    assert stages["Memtester"]["summary"]["plan"]["total_mib"] == 4  # the plugin profile's params
    series = {(s["kind"], s["key"]): s for s in report["series"] if s["stage"] == "Memtester"}
    assert series[("memtester", "coverage_pct")]["max"] == 100.0
    assert series[("memtester", "errors")]["max"] == 0.0
    assert report["inventory"]["boot"]["firmware"] in ("bios", "uefi")
    assert report["inventory"]["kernel"]["release"]
    section = report["sections"]["memtester"]
    assert section["error"] is None and section["data"]["verdict"] == "passed"
    assert "Memory test (memtester)" in (out_dir / "report.html").read_text()


def test_a_stage_that_crashes_mid_run_fails_with_its_traceback_and_the_next_stage_runs(tmp_path):
    site = throwaway_site(tmp_path / "site")
    out_dir = tmp_path / "out"
    rc, out, err = run(
        [str(BIN / "vetting-agent"), "local", "--profile", "crash-then-memtest", "--stages",
         "Crashy,Memtester", "--keep-going", "--out", str(out_dir), "--no-sensors"],
        env_with(site), cwd=tmp_path, timeout=120,
    )
    assert rc != 0  # the run failed...
    report = json.loads((out_dir / "report.json").read_text())
    stages = {s["name"]: s for s in report["stages"]}
    assert stages["Crashy"]["verdict"] == "failed"
    assert stages["Crashy"]["reason"] == "stage crashed: ZeroDivisionError: division by zero"
    # ...the next stage still ran
    assert stages["Memtester"]["verdict"] == "passed"
    # what the stage did before crashing is kept
    assert any(s["stage"] == "Crashy" and s["key"] == "before_crash" for s in report["series"])
    # the traceback is in the stage log, pointing at the plugin's code
    log = (out_dir / "agent.log").read_text()
    assert " Crashy ERROR Traceback (most recent call last):" in log, log[:3000]
    assert "vetting_crashy.py" in log and "in helper_that_divides" in log
    assert "ZeroDivisionError: division by zero" in log
