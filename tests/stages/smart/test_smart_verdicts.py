"""The SMART stage gives the expert's verdict on every real capture in
``tests/fixtures/smartctl/README.md`` — SATA HDD/SSD, SAS/SCSI, NVMe and disks behind
MegaRAID — replayed through a scripted smartctl, judged by the default rules; and a
host's override changes the verdict the way the fleet asked."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from vetting_core.model import ThresholdRule, Verdict
from vetting_core.testing import run_stage
from vetting_stages.smart import SMART_STAGE

from tests.support.fake_smartctl import FakeSmartctl

from ..helpers import FIXTURES

ROOT = FIXTURES / "smartctl"
ROW = re.compile(r"^\| `(?P<file>[^`]+)` \| (?P<drive>[\w-]+) \| (?P<verdict>pass|warn|fail|skip) \| (?P<why>.+) \|$")


def verdict_table() -> list[dict[str, str]]:
    rows = [m.groupdict() for line in (ROOT / "README.md").read_text().splitlines() if (m := ROW.match(line))]
    assert rows, "the verdict table in tests/fixtures/smartctl/README.md did not parse"
    return rows


TABLE = verdict_table()


def test_the_table_is_big_and_varied_enough():
    """≥ 40 real drives across the drive types, several failing in different ways."""
    drives = [r for r in TABLE if r["drive"] != "none"]
    assert len(drives) >= 40, len(drives)
    kinds = Counter(r["drive"] for r in drives)
    for kind in ("sata-hdd", "sata-ssd", "sas-hdd", "nvme"):
        assert kinds[kind] >= 2, kinds
    assert sum(n for k, n in kinds.items() if k.startswith("raid-")) >= 4, kinds
    assert sum(r["verdict"] == "fail" for r in drives) >= 4
    assert all((ROOT / r["file"]).is_file() for r in TABLE)


def _stage_inputs(doc: dict) -> tuple[dict, dict]:
    """The scan and the inventory a machine with this drive would show: the scan reports
    the capture's own device node and -d type; a directly attached disk is also in the
    inventory (an NVMe controller /dev/nvme0 as its namespace /dev/nvme0n1)."""
    device = doc.get("device")
    if not device:
        return {"devices": []}, {"disks": [{"name": "sda", "path": "/dev/sda"}]}
    scan = {"devices": [{k: device[k] for k in ("name", "info_name", "type", "protocol") if k in device}]}
    if "," in device["type"]:  # behind a RAID controller: not a block device of its own
        return scan, {"disks": []}
    path = device["name"] + ("n1" if device["type"] == "nvme" else "")
    return scan, {"disks": [{"name": Path(path).name, "path": path}]}


async def replay(tmp_path: Path, monkeypatch, capture: str, thresholds=()):
    doc = json.loads((ROOT / capture).read_text())
    scan, inventory = _stage_inputs(doc)
    fake = FakeSmartctl(tmp_path, monkeypatch)
    fake.answer(r"--scan-open", scan)
    fake.answer(r" -x ", ROOT / capture)
    run = await run_stage(SMART_STAGE, params={"self_test": None}, inventory=inventory, workdir=tmp_path / "wd",
                          thresholds=thresholds)
    return run, fake


def verdict_of(run) -> str:
    final = run.final_verdict()
    if final is Verdict.failed:
        return "fail"
    if final is Verdict.skipped:
        return "skip"
    warned = any(s.summary.get("warnings") for s in run.result.substeps) or run.result.summary.get("warnings")
    return "warn" if warned else "pass"


@pytest.mark.anyio
@pytest.mark.parametrize("row", TABLE, ids=[r["file"] for r in TABLE])
async def test_stage_gives_the_experts_verdict(tmp_path, monkeypatch, row):
    run, fake = await replay(tmp_path, monkeypatch, row["file"])
    assert verdict_of(run) == row["verdict"], (row["why"], run.reason, [(s.name, s.state, s.reason, s.summary.get("warnings")) for s in run.result.substeps])
    doc = json.loads((ROOT / row["file"]).read_text())
    if "," in (doc.get("device") or {}).get("type", ""):
        # a RAID-attached disk is read through its controller with the scan's -d type
        reads = [c for c in fake.calls() if "-x" in c]
        assert reads == [["--json", "-x", "-d", doc["device"]["type"], doc["device"]["name"]]]


@pytest.mark.anyio
async def test_failing_drive_names_the_counters(tmp_path, monkeypatch):
    run, _ = await replay(tmp_path, monkeypatch, "7.4/scsi-seagate-st373453lc-grown-defects.json")
    step = run.result.substeps[0]
    assert step.state is Verdict.failed
    for text in ("scsi_grown_defect_list = 260 (must be ≤ 0)", "scsi_uncorrected_write = 535 (must be ≤ 0)",
                 "scsi_uncorrected_read = 1 (must be ≤ 0)"):
        assert text in step.reason
    assert step.summary["model"] == "SEAGATE ST373453LC" and step.summary["firmware"] == "DX10"


@pytest.mark.anyio
async def test_a_host_override_accepts_what_the_fleet_accepts(tmp_path, monkeypatch):
    """A fleet that accepts up to 8 reallocated sectors: the drive with one passes
    without a warning; a drive with pending sectors still fails."""
    import vetting_stages.smart as smart_plugin
    from vetting_core.context import MemorySink, StageContext, execute_stage
    from vetting_core.profiles import plan_run
    from vetting_core.testing import make_registry

    accept = [ThresholdRule(stage="SMART", kind="smart_attr", key="*/Reallocated_Sector_Ct", op="lte", threshold=8)]
    plan = plan_run(make_registry(smart_plugin), "quick", host_thresholds=accept, only=["SMART"])
    assert sum(r.key == "*/Reallocated_Sector_Ct" and r.op == "lte" for r in plan.thresholds) == 1
    doc = ROOT / "7.3/sata-hdd-seagate-st3500418as-one-reallocated.json"
    fake = FakeSmartctl(tmp_path, monkeypatch)
    fake.answer(r"--scan-open", {"devices": [{"name": "/dev/sdb", "type": "sat", "protocol": "ATA"}]})
    fake.answer(r" -x ", doc)
    ctx = StageContext(stage="SMART", sink=MemorySink(), workdir=tmp_path / "wd", params={"self_test": None},
                       inventory={"disks": [{"name": "sdb", "path": "/dev/sdb"}]}, thresholds=plan.thresholds)
    result = await execute_stage(SMART_STAGE, ctx)
    assert result.verdict is Verdict.passed and not result.substeps[0].summary.get("warnings"), result.substeps[0].summary
    default, _ = await replay(tmp_path / "b", monkeypatch, "7.3/sata-hdd-seagate-st3500418as-one-reallocated.json")
    assert verdict_of(default) == "warn"
    assert "Reallocated_Sector_Ct = 1 (must be ≤ 0)" in default.result.substeps[0].summary["warnings"]
