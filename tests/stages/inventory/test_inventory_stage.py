"""InventoryCheck on this machine: real probes, and what happens when a probe breaks."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from vetting_core.context import MemorySink, StageContext, execute_stage
from vetting_core.inventory import typed
from vetting_core.model import Verdict
from vetting_core.plugins import load_registry
from vetting_core.records import ProbeSpec
from vetting_stages.inventory import BUILTIN_PROBES, INVENTORY_STAGE, collect_inventory
from vetting_stages.inventory.parsers import parse_meminfo
from vetting_stages.inventory.probes import collect_nics, pci_from_sysfs


@pytest.mark.anyio
async def test_inventory_check_on_this_machine(tmp_path):
    ctx = StageContext(stage="InventoryCheck", sink=MemorySink(), workdir=tmp_path, probes=BUILTIN_PROBES)
    result = await execute_stage(INVENTORY_STAGE, ctx)
    assert result.verdict is Verdict.passed, result.reason
    doc = result.inventory
    inv = typed(doc)  # the document is valid for the typed view the spec engine uses
    assert inv.cpu.threads == os.cpu_count()
    mem_kib = parse_meminfo(Path("/proc/meminfo").read_text())["MemTotal"]
    assert inv.memory.os_total_gib == pytest.approx(mem_kib / 2**20, abs=0.01)
    names = {d.name for d in inv.disks}
    assert names and not any(n.startswith(("loop", "zram")) for n in names)
    real_nics = {p.name for p in Path("/sys/class/net").iterdir()} - {"lo"}
    assert {n.name for n in inv.nics} == real_nics
    assert {p.address for p in inv.pci} == {p.name for p in Path("/sys/bus/pci/devices").iterdir()}
    # every built-in section is either present or explained
    for section in ("cpu", "memory", "disks", "nics", "pci", "gpus", "bmc", "system"):
        assert section in doc or section in doc["unavailable"], section
    try:
        import pynvml  # noqa: F401
    except ImportError:
        assert "pynvml" in doc["unavailable"]["gpus"]
    if not Path("/dev/ipmi0").exists():
        assert "bmc" in doc["unavailable"]
    assert result.summary["cpu"].endswith(f"{inv.cpu.threads} threads)")
    assert any(a.kind == "inventory" for a in result.artifacts)


@pytest.mark.anyio
async def test_broken_hanging_and_plugin_probes(tmp_path):
    async def crash():
        raise PermissionError("[Errno 13] /dev/mem")

    async def hang():
        await anyio.sleep(30)
        return {}

    async def tpm():
        return {"tpm": {"version": "2.0"}}

    async def not_a_dict():
        return ["oops"]

    probes = [
        ProbeSpec(name="crashy", collect=crash, sections=("system",)),
        ProbeSpec(name="hangs", collect=hang, sections=("bmc",), timeout_s=0.2),
        ProbeSpec(name="tpm", collect=tpm, sections=("tpm",)),
        ProbeSpec(name="weird", collect=not_a_dict),
    ]
    ctx = StageContext(stage="InventoryCheck", sink=MemorySink(), workdir=tmp_path, probes=probes)
    with anyio.fail_after(10):
        result = await execute_stage(INVENTORY_STAGE, ctx)
    assert result.verdict is Verdict.passed
    un = result.inventory["unavailable"]
    assert "PermissionError" in un["system"] and "/dev/mem" in un["system"]
    assert "timed out" in un["bmc"]
    assert "not a dict" in un["weird"]
    assert result.inventory["tpm"] == {"version": "2.0"}
    assert typed(result.inventory).extra["tpm"] == {"version": "2.0"}
    assert any("unavailable" in line.message for line in ctx.sink.lines)


@pytest.mark.anyio
async def test_without_probes_the_stage_uses_the_builtins(tmp_path):
    ctx = StageContext(stage="InventoryCheck", sink=MemorySink(), workdir=tmp_path)
    result = await execute_stage(INVENTORY_STAGE, ctx)
    assert result.verdict is Verdict.passed and result.inventory["cpu"]["threads"] == os.cpu_count()
    assert any("built-in probes" in line.message for line in ctx.sink.lines)


@pytest.mark.anyio
async def test_missing_tools_become_unavailable(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    import vetting_core.tools as tools

    monkeypatch.setattr(tools, "which", lambda b: (_ for _ in ()).throw(tools.ToolNotFound(f"{b} is not installed")))
    doc = await collect_inventory(BUILTIN_PROBES)
    assert "lsblk is not installed" in doc["unavailable"]["disks"]
    assert "ipmitool is not installed" in doc["unavailable"]["bmc"]
    assert "dmidecode is not installed" in doc["unavailable"]["memory.dimms"]
    assert doc["cpu"]["threads"] == os.cpu_count()  # /proc/cpuinfo still works


def test_pci_sysfs_reader_on_this_machine():
    devices = pci_from_sysfs()
    for d in devices:
        assert len(d["vendor_id"]) == 4 and d["address"].count(":") == 2
        for key in ("current_speed_gts", "max_speed_gts"):
            assert d[key] is None or d[key] in (2.5, 5.0, 8.0, 16.0, 32.0, 64.0)


@pytest.mark.anyio
async def test_nics_from_a_real_veth_pair(tmp_path):
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("creating a veth pair needs root")
    name = f"vtp{os.getpid() % 10000}"
    res = subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", "name", f"{name}b"], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot create a veth pair: {res.stderr.strip()}")
    try:
        subprocess.run(["ip", "link", "set", name, "up"], check=True)
        subprocess.run(["ip", "link", "set", f"{name}b", "up"], check=True)
        nics = {n["name"]: n for n in (await collect_nics())["nics"]}
        assert nics[name]["virtual"] is True and nics[name]["driver"] == "veth"
        assert nics[name]["speed_mbps"] == 10000  # what the veth driver reports
        mac = Path(f"/sys/class/net/{name}/address").read_text().strip()
        assert nics[name]["mac"] == mac
    finally:
        subprocess.run(["ip", "link", "del", name], capture_output=True)


def test_builtin_plugins_register_through_entry_points():
    reg = load_registry()
    for stage, order in (("InventoryCheck", 100), ("SpecValidate", 150), ("Firmware", 200), ("SMART", 300), ("Storage", 500)):
        assert reg.stages[stage].order == order
    assert reg.stages["SpecValidate"].runs_on == "orchestrator"
    assert reg.stages["Storage"].destructive is True
    assert {"cpu", "memory", "disks", "nics", "pci", "gpus", "bmc", "system"} <= set(reg.probes)
