"""SMART self-tests per protocol (SCSI/SAS, NVMe, ATA behind MegaRAID) and the disks a
RAID controller hides, on real captures replayed by a scripted smartctl. The self-test
logs the script returns while "polling" are the capture's own log with one new entry
put in front, the way the drive adds it."""

from __future__ import annotations

import copy
import json

import pytest

from vetting_core.model import Verdict
from vetting_core.testing import run_stage
from vetting_stages.smart import SMART_STAGE

from tests.support.fake_smartctl import FakeSmartctl

from ..helpers import FIXTURES

ROOT = FIXTURES / "smartctl"
FAST = {"self_test": "short", "poll_s": 0.05}


def load(rel: str) -> dict:
    return json.loads((ROOT / rel).read_text())


def scsi_log_with(doc: dict, code: int, result: int, string: str, hours: int) -> dict:
    """The capture with a new newest SCSI self-test entry (the others move down)."""
    old = [doc[k] for k in sorted((k for k in doc if k.startswith("scsi_self_test_") and k[-1].isdigit()),
                                  key=lambda k: int(k.rsplit("_", 1)[1]))]
    out = {k: v for k, v in doc.items() if not (k.startswith("scsi_self_test_") and k[-1].isdigit())}
    new = {"code": {"value": code, "string": "Background short"}, "result": {"value": result, "string": string},
           "power_on_time": {"hours": hours, "aka": "accumulated_power_on_hours"}}
    for i, entry in enumerate([new, *old]):
        out[f"scsi_self_test_{i}"] = entry
    return out


def ata_log_with(doc: dict, status: int, string: str, hours: int) -> dict:
    out = copy.deepcopy(doc)
    log = out["ata_smart_self_test_log"]["standard"]
    entry = {"type": {"value": 1, "string": "Short offline"}, "status": {"value": status, "string": string}, "lifetime_hours": hours}
    if status == 0:
        entry["status"]["passed"] = True
    log["table"].insert(0, entry)
    log["count"] += 1
    return out


SAS = "7.4/sas-seagate-st18000nm004j-selftests.json"


async def sas_self_test(tmp_path, monkeypatch, *polls: tuple[int, str]):
    """The SAS drive's real capture; each poll answers with a new newest entry (result, string)."""
    doc = load(SAS)
    fake = FakeSmartctl(tmp_path, monkeypatch)
    fake.answer("--scan-open", {"devices": [{"name": "/dev/sdb", "type": "scsi", "protocol": "SCSI"}]})
    fake.answer(" -x ", doc)
    fake.answer(" -t short ", {"smartctl": {"exit_status": 0}})
    fake.answer(" -l selftest ", [scsi_log_with(doc, 1, result, string, 1250) for result, string in polls])
    run = await run_stage(SMART_STAGE, params=FAST, inventory={"disks": [{"name": "sdb", "path": "/dev/sdb"}]},
                          workdir=tmp_path / "wd")
    return run, fake


@pytest.mark.anyio
async def test_sas_self_test_read_from_the_scsi_log(tmp_path, monkeypatch):
    run, fake = await sas_self_test(tmp_path, monkeypatch, (15, "Self test in progress ..."), (0, "Completed"))
    steps = {s.name: s for s in run.result.substeps}
    assert run.verdict is Verdict.passed, run.reason
    assert steps["sdb:self-test"].state is Verdict.passed
    assert steps["sdb:self-test"].summary["self_test"]["newest"][1] == 1250
    polls = [c for c in fake.calls() if "selftest" in c]
    assert len(polls) == 2 and all("-c" not in c and c[-3:] == ["-d", "scsi", "/dev/sdb"] for c in polls)


@pytest.mark.anyio
async def test_sas_self_test_failure_fails(tmp_path, monkeypatch):
    run, _ = await sas_self_test(tmp_path, monkeypatch, (7, "Failed in segment -->"))
    step = {s.name: s for s in run.result.substeps}["sdb:self-test"]
    assert step.state is Verdict.failed and step.reason == "short self-test: Failed in segment -->"


@pytest.mark.anyio
async def test_nvme_without_self_test_command_is_skipped_not_failed(tmp_path, monkeypatch):
    """An NVMe 1.2 data-centre drive: the optional self-test command came with NVMe 1.3.
    smartctl refuses with "Self-tests not supported" (nvmeprint.cpp); the drive's
    health still passes, its self-test sub-step is skipped with that reason."""
    fake = FakeSmartctl(tmp_path, monkeypatch)
    fake.answer("--scan-open", {"devices": [{"name": "/dev/nvme0", "type": "nvme", "protocol": "NVMe"}]})
    fake.answer(" -x ", ROOT / "7.3/nvme-intel-p4610-ssdpe2ke016t8.json")
    fake.answer(" -t short ", {"smartctl": {"exit_status": 4, "messages": [{"string": "Self-tests not supported", "severity": "error"}]}})
    run = await run_stage(SMART_STAGE, params=FAST, inventory={"disks": [{"name": "nvme0n1", "path": "/dev/nvme0n1"}]},
                          workdir=tmp_path / "wd")
    steps = {s.name: s for s in run.result.substeps}
    assert run.verdict is Verdict.passed, run.reason
    assert steps["nvme0n1"].state is Verdict.passed
    assert steps["nvme0n1:self-test"].state is Verdict.skipped
    assert "does not support the short self-test: Self-tests not supported" in steps["nvme0n1:self-test"].reason
    assert not [c for c in fake.calls() if "selftest" in c], "nothing to poll"


@pytest.mark.anyio
@pytest.mark.parametrize("second", ["passes", "aborted-again"])
async def test_ata_self_test_aborted_by_host_is_run_once_more(tmp_path, monkeypatch, second):
    """A SATA disk behind MegaRAID (``-d sat+megaraid,0`` on every call): the first test
    is aborted by the host (status 0x10), so it runs once more; a second abort is no
    verdict on the drive (skipped), a completed test passes."""
    doc = load("7.1/raid-sat-megaraid0-wd4000fyyx.json")
    aborted = ata_log_with(doc, 0x10, "Aborted by host", 37788)
    done = ata_log_with(aborted, 0, "Completed without error", 37788) if second == "passes" \
        else ata_log_with(aborted, 0x10, "Aborted by host", 37788)
    fake = FakeSmartctl(tmp_path, monkeypatch)
    fake.answer("--scan-open", {"devices": [{"name": "/dev/sda", "type": "sat+megaraid,0", "protocol": "ATA",
                                             "info_name": "/dev/sda [megaraid_disk_00] [SAT]"}]})
    fake.answer(" -x ", doc)
    fake.answer(" -t short ", {"smartctl": {"exit_status": 0}})
    fake.answer(" -l selftest ", [aborted, done])
    run = await run_stage(SMART_STAGE, params=FAST, inventory={"disks": []}, workdir=tmp_path / "wd")
    steps = {s.name: s for s in run.result.substeps}
    name = "sda[sat+megaraid,0]"
    starts = [c for c in fake.calls() if "-t" in c]
    assert len(starts) == 2 and all(c[-3:] == ["-d", "sat+megaraid,0", "/dev/sda"] for c in starts)
    assert steps[name].state is Verdict.passed
    assert any("aborted (Aborted by host); running it once more" in line.message for line in run.lines)
    if second == "passes":
        assert steps[f"{name}:self-test"].state is Verdict.passed and run.verdict is Verdict.passed
    else:
        assert steps[f"{name}:self-test"].state is Verdict.skipped
        assert "aborted twice" in steps[f"{name}:self-test"].reason


# -- controllers ------------------------------------------------------------------------

@pytest.mark.anyio
async def test_every_disk_behind_megaraid_is_read_with_its_device_type(tmp_path, monkeypatch):
    """The scan of a real MegaRAID server: two SCSI disks, one SATA, seven behind the
    controller. The logical drive /dev/sda (a PERC volume) cannot be read itself; its
    physical disks are, each with ``-d megaraid,N``."""
    fake = FakeSmartctl(tmp_path, monkeypatch)
    fake.answer("--scan-open", ROOT / "7.1/scan-open-megaraid-telegraf.json")
    fake.answer(" -x -d megaraid", ROOT / "7.1/raid-megaraid1-sas-toshiba-mg08sca16tey.json")
    fake.answer(" -x .*/dev/sda$", ROOT / "7.0/open-failed-access-denied.json")
    inventory = {"disks": [{"name": "sda", "path": "/dev/sda", "vendor": "DELL", "model": "PERC H730P Mini"}]}
    run = await run_stage(SMART_STAGE, params={"self_test": None}, inventory=inventory, workdir=tmp_path / "wd")
    steps = {s.name: s for s in run.result.substeps}
    assert run.verdict is Verdict.passed, run.reason
    assert steps["sda"].state is Verdict.skipped and "its physical disks are read through the controller" in steps["sda"].reason
    behind = [n for n in steps if n.startswith("bus_6[megaraid,")]
    assert len(behind) == 7 and all(steps[n].state is Verdict.passed for n in behind)
    reads = sorted(tuple(c[2:]) for c in fake.calls() if "-x" in c)
    assert reads == sorted([("-d", "scsi", "/dev/sda")] + [("-d", f"megaraid,{n}", "/dev/bus/6") for n in range(8, 15)])
    assert run.result.summary["controllers"] == ["megaraid"]


@pytest.mark.anyio
async def test_a_raid_volume_smart_cannot_reach_is_a_warning_naming_the_controller(tmp_path, monkeypatch):
    fake = FakeSmartctl(tmp_path, monkeypatch)
    fake.answer("--scan-open", ROOT / "7.3/scan-open-this-vm.json")
    fake.answer(" -x ", ROOT / "7.0/open-failed-access-denied.json")
    inventory = {"disks": [{"name": "sda", "path": "/dev/sda", "vendor": "HP", "model": "LOGICAL VOLUME"}]}
    run = await run_stage(SMART_STAGE, params={"self_test": None}, inventory=inventory, workdir=tmp_path / "wd")
    step = run.result.substeps[0]
    assert step.state is Verdict.skipped
    assert step.reason.startswith("warning: SMART cannot reach /dev/sda through any device type: it is a RAID "
                                  "logical drive (logical drive 'HP LOGICAL VOLUME')")
    assert run.result.summary["warnings"] and any(line.level == "warning" for line in run.lines)


@pytest.mark.anyio
async def test_a_plain_disk_without_smart_stays_a_plain_skip(tmp_path, monkeypatch):
    fake = FakeSmartctl(tmp_path, monkeypatch)
    fake.answer("--scan-open", ROOT / "7.3/scan-open-this-vm.json")
    fake.answer(" -x ", ROOT / "7.3/virtio-vda-x.json")
    run = await run_stage(SMART_STAGE, params={"self_test": None}, inventory={"disks": [{"name": "vda", "path": "/dev/vda"}]},
                          workdir=tmp_path / "wd")
    assert run.verdict is Verdict.skipped
    assert run.result.substeps[0].reason == "/dev/vda: Unable to detect device type"
    assert "warnings" not in run.result.summary
