"""SMART: the parser on real captures (SATA, SAS, NVMe, failing and healthy), the
default thresholds judging counter deltas, and the stage on this machine."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from vetting_core.context import MemorySink, StageContext, execute_stage
from vetting_core.model import Measurement, Verdict
from vetting_core.thresholds import BUILTIN_OPERATORS, ThresholdEngine
from vetting_stages.smart import SMART_STAGE, delta_rules, parse_smart, smart_thresholds
from vetting_stages.smart.parser import exit_bits

from ..helpers import fixture_text


def test_failing_hitachi_sata():
    r = parse_smart(fixture_text("smartctl/7.1/ata-hitachi-failing.json"))
    assert r["verdict"] == "failed"
    assert exit_bits(r["exit_status"]) == [3, 4, 6, 7]
    assert r["reasons"][0] == "SMART overall-health self-assessment: FAILED"
    assert any("Reallocated_Sector_Ct failed now" in x for x in r["reasons"])
    assert any("self-test log contains errors" in x for x in r["reasons"])
    assert any("exit bit 6" in w for w in r["warnings"])
    assert r["counters"] == {
        "Reallocated_Sector_Ct": 1975, "Reallocated_Event_Count": 3831, "Current_Pending_Sector": 8,
        "Offline_Uncorrectable": 0, "UDMA_CRC_Error_Count": 0, "ata_error_log_count": 56,
    }
    assert r["self_test"]["failed_entries"] == 1 and r["self_test"]["last_passed"] is True
    assert r["self_test"]["polling_minutes"] == {"short": 1, "extended": 79}


def test_nvme_counters_and_critical_warning_bits_by_name():
    r = parse_smart(fixture_text("smartctl/7.0/nvme-samsung-970-media-errors.json"))
    assert r["verdict"] == "passed" and r["passed"] is True  # the stage's rules fail it (media_errors)
    c = r["counters"]
    assert c["media_errors"] == 7 and c["percentage_used"] == 3
    assert c["available_spare_margin"] == 100 - 10 - 1 or c["available_spare_margin"] == c["available_spare"] - 10
    assert {k: v for k, v in c.items() if k.startswith("critical_warning_")} == {
        "critical_warning_available_spare_low": 0, "critical_warning_temperature": 0,
        "critical_warning_reliability_degraded": 0, "critical_warning_read_only": 0,
        "critical_warning_volatile_backup_failed": 0, "critical_warning_persistent_memory_read_only": 0,
    }
    optane = parse_smart(fixture_text("smartctl/7.3/nvme-intel-optane-mempek1w032ga.json"))
    assert optane["counters"]["available_spare_margin"] == 100  # the drive's own threshold is 0


def test_scsi_identity_from_each_smartctl_version():
    """smartctl < 7.3 says model_name/revision for SCSI; ≥ 7.3 scsi_model_name/scsi_revision."""
    old = parse_smart(fixture_text("smartctl/6.7/sas-seagate-st1200mm0088.json"))
    new = parse_smart(fixture_text("smartctl/7.4/sas-seagate-st18000nm004j-selftests.json"))
    assert (old["model"], old["firmware"]) == ("SEAGATE ST1200MM0088", "N004")
    assert (new["model"], new["firmware"], new["serial"]) == ("SEAGATE ST18000NM004J", "E002", "ZR51ZEKN0000C2061A1W")
    sas = parse_smart(fixture_text("smartctl/7.4/scsi-seagate-st373453lc-grown-defects.json"))
    assert sas["counters"] == {"scsi_grown_defect_list": 260, "scsi_uncorrected_read": 1, "scsi_uncorrected_write": 535}


def test_raw_values_decoded_per_attribute():
    from vetting_stages.smart.parser import decode_raw

    def raw(string, value=0):
        return {"raw": {"string": string, "value": value}}

    assert decode_raw(raw("0 0 4", 4)) == 4  # Seagate Command_Timeout: three 16-bit counters
    assert decode_raw(raw("1 1 1", 4295032833)) == 1  # not the packed 4295032833
    assert decode_raw(raw("36 (Min/Max 0/48)", 3145764)) == 36
    assert decode_raw(raw("2111 (12437 0)", 53416508262463)) == 2111
    assert decode_raw(raw("44299h+04m+54.612s", 1265348905053451)) == 44299
    assert decode_raw(raw("0x0000000a0003", 10)) == "0x0000000a0003"  # kept as printed
    sat = parse_smart(fixture_text("smartctl/7.1/raid-sat-megaraid14-seagate-st6000nm0115.json"))
    assert sat["counters"]["Command_Timeout"] == 0 and sat["raw"]["188 Command_Timeout"] == 0
    assert sat["raw"]["190 Airflow_Temperature_Cel"] == 25 and sat["raw"]["240 Head_Flying_Hours"] == 44299


def test_megaraid_attribute_check_is_a_note_not_a_warning():
    r = parse_smart(fixture_text("smartctl/7.1/raid-sat-megaraid0-wd4000fyyx.json"))
    assert r["exit_bits"] == [2] and r["warnings"] == [] and "Attribute" in " ".join(r["messages"])
    assert r["notes"] and r["device_type"] == "sat+megaraid,0"


def test_self_test_logs_of_every_protocol():
    from vetting_stages.smart.parser import self_test_state

    scsi = self_test_state(json.loads(fixture_text("smartctl/7.4/sas-seagate-st18000nm004j-selftests.json")))
    assert scsi["outcome"] == "passed" and scsi["last_type"] == "Background short" and scsi["newest"][1] == 1239
    ata = self_test_state(json.loads(fixture_text("smartctl/7.1/raid-sat-megaraid0-wd4000fyyx.json")))
    assert ata["outcome"] == "passed" and ata["newest"][0] == 4
    nvme = self_test_state(json.loads(fixture_text("smartctl/7.4/nvme-sabrent-rocket4-err-log-invalid-field.json")))
    assert nvme == {"running": False}  # log present, no entry yet


def test_scan_open_lists_disks_behind_controllers():
    from vetting_stages.smart import targets
    from vetting_stages.smart.parser import parse_scan

    scan = parse_scan(fixture_text("smartctl/7.1/scan-open-megaraid-telegraf.json"))
    assert [d["controller"] for d in scan].count("megaraid") == 7
    inventory = [{"name": "sda", "path": "/dev/sda"}, {"name": "sdc", "path": "/dev/sdc"}]
    t = targets(inventory, scan)
    assert [(x["name"], x["dtype"]) for x in t[:2]] == [("sda", "scsi"), ("sdc", "sat")]
    assert [x["name"] for x in t[2:]] == [f"bus_6[megaraid,{n}]" for n in range(8, 15)]
    assert parse_scan(fixture_text("smartctl/7.3/scan-open-this-vm.json")) == []


def test_virtio_disk_is_skipped_with_smartctls_reason():
    r = parse_smart(fixture_text("smartctl/7.3/virtio-vda-x.json"))
    assert r["verdict"] == "skipped" and r["reasons"] == ["/dev/vda: Unable to detect device type"]


def test_garbage_output_is_an_error():
    with pytest.raises(ValueError, match="smartctl --json printed invalid JSON"):
        parse_smart("smartctl 7.3 ... Segmentation fault")


def _sample(key: str, value: float, stage: str = "SMART") -> Measurement:
    return Measurement(ts=datetime.now(UTC), stage=stage, kind="smart_attr", key=key, value=value)


def test_default_rules_judge_absolute_health_and_deltas():
    engine = ThresholdEngine(smart_thresholds("SMART"), {o.name: o for o in BUILTIN_OPERATORS})
    res = engine.evaluate([_sample("sdc/Current_Pending_Sector", 8), _sample("sdd/Reallocated_Sector_Ct", 3),
                           _sample("nvme0/critical_warning_read_only", 1), _sample("nvme0/critical_warning_temperature", 1),
                           _sample("nvme0/available_spare_margin", 0), _sample("nvme0/percentage_used", 85)])
    judged = sorted((engine.rules[b.rule].key, engine.rules[b.rule].op, engine.rules[b.rule].severity.value) for b in res.breaches)
    assert judged == [
        ("*/Current_Pending_Sector", "lte", "critical"),
        ("*/Reallocated_Sector_Ct", "lte", "warning"),
        ("*/available_spare_margin", "gt", "critical"),
        ("*/critical_warning_read_only", "eq", "critical"),
        ("*/critical_warning_temperature", "eq", "warning"),
        ("*/percentage_used", "lte", "warning"),
    ]
    # the same counters later in the stage: one more pending sector is a delta breach too
    res = engine.evaluate([_sample("sdc/Current_Pending_Sector", 9)])
    assert ("delta_lte", 1) in {(engine.rules[b.rule].op, b.observed) for b in res.breaches}
    # hundreds of reallocated sectors fail
    res = engine.evaluate([_sample("sde/Reallocated_Sector_Ct", 260)])
    assert "critical" in {engine.rules[b.rule].severity.value for b in res.breaches}
    # Storage judges deltas only: a drive's history is SMART's business
    storage = ThresholdEngine(delta_rules("Storage"), {o.name: o for o in BUILTIN_OPERATORS})
    assert storage.evaluate([_sample("sdc/Current_Pending_Sector", 8, stage="Storage")]).breaches == []
    assert all(r.stage == "SMART" for r in SMART_STAGE.thresholds)


@pytest.mark.anyio
async def test_smart_stage_on_this_machine(tmp_path):
    """Runs the real stage: this VM's only disk is virtio without SMART, so the disk's
    sub-step and the stage are skipped with smartctl's reason (never failed)."""
    import subprocess

    from vetting_stages.inventory.probes import collect_disks

    inventory = await collect_disks()
    ctx = StageContext(stage="SMART", sink=MemorySink(), workdir=tmp_path, inventory=inventory, params={"self_test": "short"})
    result = await execute_stage(SMART_STAGE, ctx)
    scan = subprocess.run(["smartctl", "--scan"], capture_output=True, text=True).stdout
    if scan.strip():  # a machine with SMART-capable disks: each one gets a verdict
        assert result.verdict in (Verdict.passed, Verdict.failed)
        assert ctx.measurement_count > 0
    else:
        assert result.verdict is Verdict.skipped
        assert all(s.state is Verdict.skipped and s.reason for s in result.substeps)
        assert any(a.kind == "smartctl" for a in result.artifacts)


@pytest.mark.anyio
async def test_smart_stage_without_disks_is_skipped(tmp_path):
    ctx = StageContext(stage="SMART", sink=MemorySink(), workdir=tmp_path, inventory={"disks": []})
    result = await execute_stage(SMART_STAGE, ctx)
    assert result.verdict is Verdict.skipped and "no disks" in result.reason


FAKE_SMARTCTL = r'''#!/bin/sh
# Stand-in for a SATA disk this machine lacks: replays captured smartctl JSON for
# "-x", and walks a self-test from "in progress" to the outcome in $SELFTEST_FINAL.
state="$FAKE_STATE"
case "$*" in
  *" -x "*) cat "$FAKE_X" ;;
  *" -t "*)
    echo 0 > "$state"
    if [ -n "$FAKE_REFUSE" ]; then
      echo '{"smartctl":{"exit_status":4,"messages":[{"string":"Command \"Execute SMART Short self-test routine immediately in off-line mode\" failed: Input/output error","severity":"error"}]}}'
      exit 4
    fi
    echo '{"smartctl":{"exit_status":0}}' ;;
  *" -c "*)
    n=$(cat "$state"); echo $((n + 1)) > "$state"
    if [ "$n" -lt 2 ]; then
      echo '{"smartctl":{"exit_status":0},"ata_smart_data":{"self_test":{"status":{"value":249,"string":"in progress, 90% of test remaining","remaining_percent":90}}}}'
    else
      cat "$SELFTEST_FINAL"
    fi ;;
  *) echo '{"smartctl":{"exit_status":0}}' ;;
esac
'''


@pytest.mark.anyio
@pytest.mark.parametrize("outcome", ["pass", "read-failure", "refused", "never-ran", "long-over-budget"])
async def test_self_test_is_polled_until_done(tmp_path, monkeypatch, outcome):
    """The polling loop with a scripted smartctl (no SATA disk here): two "in progress"
    answers, then the self-test log; a read failure fails the disk's sub-step. A start
    smartctl reports as failed, or a log without a new entry, fails it too: an old
    entry's "Completed without error" is never taken for this run's result."""
    import json
    import os

    from ..helpers import FIXTURES

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "smartctl"
    fake.write_text(FAKE_SMARTCTL)
    fake.chmod(0o755)
    hitachi = json.loads(fixture_text("smartctl/7.1/ata-hitachi-failing.json"))
    log = hitachi["ata_smart_self_test_log"]
    before = json.loads((FIXTURES / "smartctl/7.0/sat-seagate-attributes-pass.json").read_text())
    if outcome == "long-over-budget":  # a big HDD: its extended test would take 200 min
        before.setdefault("ata_smart_data", {})["self_test"] = {"status": {"value": 0}, "polling_minutes": {"short": 2, "extended": 200}}
    if outcome in ("pass", "refused", "long-over-budget"):
        log = {"standard": {"revision": 1, "table": [log["standard"]["table"][0]], "count": 1}}
    elif outcome == "never-ran":  # the log before the start, unchanged
        log = {"standard": {"revision": 1, "table": [log["standard"]["table"][0]], "count": 1}}
        before["ata_smart_self_test_log"] = log
    else:
        log = {"standard": {"revision": 1, "table": log["standard"]["table"][1:], "count": 2}}
    x_json = tmp_path / "x.json"
    x_json.write_text(json.dumps(before))
    final = tmp_path / "final.json"
    final.write_text(json.dumps({"smartctl": {"exit_status": 0}, "ata_smart_data": {"self_test": {"status": {"value": 0, "string": "completed"}}}, "ata_smart_self_test_log": log}))
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_X", str(x_json))
    if outcome == "refused":
        monkeypatch.setenv("FAKE_REFUSE", "1")
    monkeypatch.setenv("FAKE_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("SELFTEST_FINAL", str(final))
    ctx = StageContext(stage="SMART", sink=MemorySink(), workdir=tmp_path / "wd",
                       inventory={"disks": [{"name": "sdc", "path": "/dev/sdc"}]},
                       params={"self_test": "long" if outcome == "long-over-budget" else "short", "poll_s": 0.05,
                               "self_test_budget_s": 5400})
    result = await execute_stage(SMART_STAGE, ctx)
    polls = [line for line in ctx.sink.lines if line.message.startswith("$") and " -c " in line.message]
    if outcome == "refused":
        assert polls == [] and result.verdict is Verdict.failed
        assert "could not start the short self-test (exit 4)" in result.reason and "Input/output error" in result.reason
        return
    assert len(polls) == 3  # in progress, in progress, done
    assert any("self-test" in msg for _, _, msg in ctx.sink.progress_updates)
    # counters sampled before and after the self-test: deltas are judgeable
    keys = [m.key for m in ctx.sink.samples if m.kind == "smart_attr"]
    assert keys.count("sdc/Current_Pending_Sector") == 2
    started = [line.message for line in ctx.sink.lines if line.message.startswith("$") and " -t " in line.message]
    assert len(started) == 1 and " -t short " in started[0]
    if outcome in ("pass", "long-over-budget"):
        assert result.verdict is Verdict.passed, result.reason
        step = {x.name: x for x in result.substeps}["sdc:self-test"]
        assert step.state is Verdict.passed and step.summary["self_test"]["kind"] == "short"
        over = any("extended self-test takes 200 min, over this profile's 90 min budget" in line.message
                   for line in ctx.sink.lines)
        assert over is (outcome == "long-over-budget")
    elif outcome == "never-ran":
        assert result.verdict is Verdict.failed and "left no new entry in the self-test log" in result.reason
    else:
        assert result.verdict is Verdict.failed and "short self-test: Completed: read failure" in result.reason


@pytest.mark.anyio
async def test_every_disk_is_read_at_once(tmp_path, monkeypatch):
    """Ten disks take as long as the slowest: the reads of three disks overlap in time
    (a scripted smartctl logs when each call starts and ends), and each disk keeps its
    own sub-step, in inventory order."""
    import os

    from ..helpers import FIXTURES

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    fake = bin_dir / "smartctl"
    fake.write_text(
        "#!/bin/sh\n"
        'case "$*" in *--scan-open*) echo \'{"devices": []}\'; exit 0 ;; esac\n'
        f"echo \"start $(date +%s.%N)\" >> '{calls}'\n"
        "sleep 0.5\n"
        f"echo \"end $(date +%s.%N)\" >> '{calls}'\n"
        f"cat '{FIXTURES / 'smartctl/7.1/nvme-intel-660p-pass.json'}'\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    disks = [{"name": f"nvme{i}n1", "path": f"/dev/nvme{i}n1"} for i in range(3)]
    ctx = StageContext(stage="SMART", sink=MemorySink(), workdir=tmp_path / "wd", inventory={"disks": disks},
                       params={"self_test": None})
    result = await execute_stage(SMART_STAGE, ctx)
    assert result.verdict is Verdict.passed, result.reason
    assert [s.name for s in result.substeps] == ["nvme0n1", "nvme1n1", "nvme2n1"]
    assert all(s.state is Verdict.passed for s in result.substeps)
    marks = [line.split() for line in calls.read_text().splitlines()]
    starts = [float(t) for kind, t in marks if kind == "start"]
    ends = [float(t) for kind, t in marks if kind == "end"]
    assert len(starts) == len(ends) == 3
    assert max(starts) < min(ends), "a disk's read began only after another's ended: not concurrent"
