"""Firmware snapshots on this machine and SpecValidate verdicts."""

from __future__ import annotations

from pathlib import Path

import pytest

from vetting_core.context import MemorySink, StageContext, execute_stage
from vetting_core.model import Verdict
from vetting_stages.firmware import FIRMWARE_STAGE, hba_firmware
from vetting_stages.inventory.parsers import parse_cpuinfo
from vetting_stages.spec_validate import SPEC_VALIDATE_STAGE

from .realistic import docs_example_yaml, fresh


def microcode() -> str | None:
    return parse_cpuinfo(Path("/proc/cpuinfo").read_text()).get("microcode")


async def firmware(tmp_path, spec=None, inventory=None):
    ctx = StageContext(stage="Firmware", sink=MemorySink(), workdir=tmp_path, spec=spec, inventory=inventory)
    return ctx, await execute_stage(FIRMWARE_STAGE, ctx)


@pytest.mark.anyio
async def test_firmware_snapshots_on_this_machine(tmp_path):
    ctx, result = await firmware(tmp_path)
    assert result.verdict is Verdict.passed, result.reason
    snaps = {s.component: s for s in result.firmware}
    if microcode():
        assert snaps["microcode"].version == microcode()
    if not Path("/dev/ipmi0").exists():
        assert "bmc" not in snaps and "ipmi" in result.summary["unavailable"]["bmc"]
    assert result.summary["firmware"] == [{"component": s.component, "identifier": s.identifier, "version": s.version} for s in result.firmware]


@pytest.mark.anyio
async def test_firmware_mismatch_is_a_verdict(tmp_path):
    if not microcode():
        pytest.skip("this CPU reports no microcode revision")
    _, ok = await firmware(tmp_path / "a", spec={"firmware": {"microcode": [microcode(), "0xdeadbeef"]}})
    assert ok.verdict is Verdict.passed and ok.summary["spec_diffs"] == []
    _, bad = await firmware(tmp_path / "b", spec={"firmware": {"microcode": "0xdeadbeef"}})
    assert bad.verdict is Verdict.failed and "0xdeadbeef" in bad.reason
    (diff,) = bad.summary["spec_diffs"]
    assert diff["severity"] == "critical" and diff["actual"] == microcode() and diff["field"] == "firmware.microcode"


@pytest.mark.anyio
async def test_firmware_that_cannot_be_read_is_a_warning(tmp_path):
    _, result = await firmware(tmp_path, spec={"firmware": {"bmc": "7.00.00.173", "gpu_vbios": "96.00.74.00.0D"}},
                               inventory={"gpus": []})
    if Path("/dev/ipmi0").exists():
        pytest.skip("this machine has a BMC")
    assert result.verdict is Verdict.passed
    assert {d["field"]: d["severity"] for d in result.summary["spec_diffs"]} == {"firmware.bmc": "warning", "firmware.gpu_vbios": "warning"}


@pytest.mark.anyio
async def test_firmware_gpu_vbios_from_inventory(tmp_path):
    inv = fresh()
    _, result = await firmware(tmp_path, spec={"firmware": {"gpu_vbios": "96.00.61.00.01"}}, inventory={"gpus": inv["gpus"]})
    assert result.verdict is Verdict.failed and "8 firmware mismatch" in result.reason
    assert sum(1 for s in result.firmware if s.component == "gpu_vbios") == 8


def test_hba_sysfs_reader(tmp_path):
    # the layout of /sys/class/scsi_host for an mpt3sas HBA and an ahci port
    (tmp_path / "host0").mkdir()
    (tmp_path / "host0" / "proc_name").write_text("mpt3sas\n")
    (tmp_path / "host0" / "version_fw").write_text("16.00.12.00\n")
    (tmp_path / "host1").mkdir()
    (tmp_path / "host1" / "proc_name").write_text("ahci\n")
    assert hba_firmware(tmp_path) == [{"host": "host0", "driver": "mpt3sas", "version": "16.00.12.00"}]
    assert hba_firmware(tmp_path / "missing") == []


async def validate(tmp_path, spec, inventory):
    import yaml

    ctx = StageContext(stage="SpecValidate", sink=MemorySink(), workdir=tmp_path, inventory=inventory,
                       spec=yaml.safe_load(spec) if isinstance(spec, str) else spec)
    return await execute_stage(SPEC_VALIDATE_STAGE, ctx)


@pytest.mark.anyio
async def test_spec_validate_verdicts(tmp_path):
    good = await validate(tmp_path, docs_example_yaml(), fresh())
    assert good.verdict is Verdict.passed and good.summary["counts"] == {"critical": 0, "warning": 0, "info": 1}
    inv = fresh()
    inv["pci"][0]["current_width"] = 8
    inv["memory"]["dimms"].pop()
    bad = await validate(tmp_path, docs_example_yaml(), inv)
    assert bad.verdict is Verdict.failed and bad.reason.startswith("2 critical spec mismatch(es)")
    assert {d["field"] for d in bad.summary["spec_diffs"] if d["severity"] == "critical"} == {"pcie[0000:18:00.0].width", "memory.dimm_count"}


@pytest.mark.anyio
async def test_spec_validate_without_spec_or_with_a_bad_one(tmp_path):
    none = await validate(tmp_path, None, fresh())
    # it checked nothing: skipped with the reason, never passed
    assert none.verdict is Verdict.skipped and none.summary["spec_diffs"] == []
    assert none.reason.startswith("no expected spec for this host: nothing to validate")
    broken = await validate(tmp_path, {"memory": {"total_gib": "lots"}}, fresh())
    assert broken.verdict is Verdict.failed and "$.memory.total_gib" in broken.reason
    empty = await validate(tmp_path, {"cpu": {"sockets": 2}}, {})
    assert empty.verdict is Verdict.failed and "no inventory" in empty.reason


@pytest.mark.anyio
async def test_spec_validate_against_this_machine(tmp_path):
    """The real inventory of this machine against a spec written for it and one not."""
    import os

    from vetting_stages.inventory import BUILTIN_PROBES, collect_inventory

    inv = await collect_inventory(BUILTIN_PROBES)
    mine = {"cpu": {"threads": os.cpu_count()}, "memory": {"total_gib": round(inv["memory"]["total_gib"])}}
    assert (await validate(tmp_path, mine, inv)).verdict is Verdict.passed
    other = {"cpu": {"sockets": 2, "threads": 224}, "gpus": [{"model": "H100", "count": 8}]}
    res = await validate(tmp_path, other, inv)
    assert res.verdict is Verdict.failed
    crit = {d["field"] for d in res.summary["spec_diffs"] if d["severity"] == "critical"}
    assert {"cpu.sockets", "cpu.threads"} <= crit and ("gpus.count" in crit or "gpus[0].count" in crit)


@pytest.mark.anyio
async def test_versions_the_bmc_reported_are_recorded_and_judged(tmp_path):
    bmc = [{"id": "BIOS", "name": "System BIOS", "version": "1.1.0", "component": "bios", "updateable": True},
           {"id": "CPLD0", "name": "Backplane CPLD", "version": "0.9", "component": "cpld", "updateable": False}]
    spec = {"firmware": {"bios": {"bmc:*": "1.1.0"}, "cpld": "0.9"}}

    async def run(name, params, spec):
        ctx = StageContext(stage="Firmware", sink=MemorySink(), workdir=tmp_path / name, spec=spec, params=params)
        return await execute_stage(FIRMWARE_STAGE, ctx)

    ok = await run("ok", {"bmc_firmware": bmc}, spec)
    assert ok.verdict is Verdict.passed, ok.reason
    by_id = {s.identifier: s for s in ok.firmware}
    assert by_id["bmc:BIOS"].version == "1.1.0" and by_id["bmc:BIOS"].raw["source"] == "bmc"
    assert by_id["bmc:CPLD0"].component == "cpld"  # only the BMC sees it
    old = await run("old", {"bmc_firmware": [{**bmc[0], "version": "1.0.0"}, bmc[1]]}, spec)
    assert old.verdict is Verdict.failed and "bios bmc:BIOS: firmware 1.0.0, expected 1.1.0" in old.reason
    unread = await run("unread", {"bmc_firmware_error": "BMC https://10.0.0.7 unreachable"}, {"firmware": {"cpld": "0.9"}})
    assert unread.verdict is Verdict.passed  # cannot verify is a warning, not a verdict
    assert unread.summary["unavailable"]["bmc_inventory"] == "BMC https://10.0.0.7 unreachable"
    assert [d["message"] for d in unread.summary["spec_diffs"]] == ["cannot verify cpld firmware: not reported"]
