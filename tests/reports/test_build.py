"""build_report: the JSON report document."""

from __future__ import annotations

import json
import statistics
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from vetting_core.model import Measurement, Stage, ThresholdEvaluation, Verdict
from vetting_reports import SCHEMA_VERSION, build_report
from vetting_reports.series import MAX_LINES, MAX_POINTS


def test_round_trips_as_strict_json(failed_record, registry):
    report = build_report(failed_record, registry)
    text = json.dumps(report, allow_nan=False)  # no NaN/inf may slip into the document
    assert json.loads(text) == report
    assert report["schema"] == "vetting-report" and report["schema_version"] == SCHEMA_VERSION == 1


def test_verdict_and_failures_on_top(failed_record):
    r = build_report(failed_record)
    assert r["verdict"] == "failed"
    failures = [(f["stage"], f["substep"]) for f in r["summary"]["failures"]]
    assert ("SMART", "nvme1n1") in failures and ("SMART", None) in failures and ("Storage", None) in failures
    assert r["summary"]["stages"] == {"passed": 8, "failed": 2, "skipped": 1}
    assert r["summary"]["critical_breaches"] == 3


def test_host_secrets_never_reach_the_report(failed_record):
    text = json.dumps(build_report(failed_record))
    assert "never-in-a-report" not in text and "boot_config" not in text


def test_series_summary_matches_an_independent_computation(failed_record):
    r = build_report(failed_record)
    mine = [
        m.value for m in failed_record.measurements if (m.stage, m.kind, m.key) == ("Burn", "temp", "cpu1")
    ]
    (doc,) = [s for s in r["series"] if (s["stage"], s["kind"], s["key"]) == ("Burn", "temp", "cpu1")]
    assert doc["count"] == len(mine) == doc["numeric_count"]
    assert doc["min"] == min(mine) and doc["max"] == max(mine)
    assert doc["median"] == statistics.median(mine)
    assert doc["unit"] == "°C"
    # series follow the pipeline order, not the alphabet
    stages = [s["stage"] for s in r["series"]]
    assert stages.index("Firmware") < stages.index("SMART") < stages.index("Burn")


def test_invalid_and_textual_samples(failed_record):
    r = build_report(failed_record)
    by = {(s["stage"], s["kind"], s["key"]): s for s in r["series"]}
    garbage = by[("Firmware", "sensor", "garbage")]
    assert garbage["count"] == 1 and garbage["invalid_count"] == 1 and garbage["min"] is None
    link = by[("Network", "link", "eno1")]
    assert link["text"] == {"count": 1, "last": "up", "distinct": ["up"], "distinct_count": 1}
    assert link["invalid_count"] == 0


def test_breaches_grouped_with_rule_and_worst_value(failed_record):
    r = build_report(failed_record)
    by = {(b["stage"], b["key"]): b for b in r["breaches"]}
    burn = by[("Burn", "cpu1")]
    expected = [e.observed for e in failed_record.evaluations if e.stage == "Burn"]
    assert burn["count"] == len(expected) > 0 and burn["worst"] == max(expected)
    assert burn["rule"]["op"] == "lte" and burn["rule"]["threshold"] == 85
    assert burn["description"] == "temp cpu* ≤ 85 °C"
    storage = by[("Storage", "nvme1n1")]
    assert storage["description"] == "throughput nvme* within 10% of 3000 MB/s"
    worst = max(
        (e.observed for e in failed_record.evaluations if e.key == "nvme1n1"), key=lambda v: abs(v - 3000)
    )
    assert storage["worst"] == worst
    smart = by[("SMART", "nvme1n1/reallocated_sectors")]
    assert smart["worst"] == 12 and smart["rule"]["op"] == "delta_lte"


def test_breach_without_rule_id_is_matched_by_glob(failed_record):
    rec = msgspec.structs.replace(
        failed_record,
        evaluations=[
            ThresholdEvaluation(
                rule_id=None,
                stage="PSU",
                kind="power",
                key="psu1",
                ts=datetime.now(UTC),
                observed=912.0,
                passed=False,
            )
        ],
    )
    (b,) = build_report(rec)["breaches"]
    assert b["rule_id"] is None and b["rule"]["id"] == 3 and b["worst"] == 912.0


def test_stage_substeps_timings_artifacts_firmware(failed_record):
    r = build_report(failed_record)
    stages = {s["name"]: s for s in r["stages"]}
    assert [s["name"] for s in r["stages"]][:3] == ["InventoryCheck", "SpecValidate", "Firmware"]
    assert stages["CPUStress"]["duration_s"] == 1800.0
    assert [x["name"] for x in stages["Storage"]["substeps"]] == ["nvme0n1", "nvme1n1", "sda"]
    assert stages["Storage"]["substeps"][1]["verdict"] == "failed"
    assert stages["GPU"]["verdict"] == "skipped" and stages["GPU"]["reason"] == "no NVIDIA GPU found"
    assert {a["sha256"] for a in r["artifacts"]} == {a.sha256 for a in failed_record.artifacts}
    assert [f["component"] for f in r["firmware"]] == ["bios", "bmc", "nic", "nvme_fw"]
    assert r["timings"]["run_s"] == r["run"]["duration_s"] > 0
    assert r["inventory"]["system"]["serial"] == "7XK2Q93"
    assert r["inventory_summary"]["cpu"].startswith("2 × Intel(R) Xeon(R) Gold 6338")
    assert r["spec_diffs"][0]["field"] == "nics[eno2].speed_mbps"


def test_charts_are_downsampled_and_keep_spikes(failed_record):
    r = build_report(failed_record)
    charts = {c["title"]: c for c in r["charts"]}
    assert list(charts)[:2] == ["temp (°C)", "power (W)"]  # temperatures first
    temp = charts["temp (°C)"]
    assert len(temp["lines"]) <= MAX_LINES
    cpu1 = next(line for line in temp["lines"] if line["key"] == "cpu1")
    assert 2 < len(cpu1["points"]) <= MAX_POINTS
    assert cpu1["count"] == sum(1 for m in failed_record.measurements if m.kind == "temp" and m.key == "cpu1")
    # a bucket keeps its max: the 93 °C excursion survives downsampling
    true_max = max(m.value for m in failed_record.measurements if m.kind == "temp" and m.key == "cpu1")
    assert max(p[3] for p in cpu1["points"]) == true_max
    assert any(lim["value"] == 85.0 for lim in temp["limits"])
    assert [s["name"] for s in temp["stages"]][:2] == ["InventoryCheck", "SpecValidate"]


def test_passed_run(passed_record):
    r = build_report(passed_record)
    assert r["verdict"] == "passed" and r["summary"]["failures"] == [] and r["breaches"] == []


@pytest.mark.parametrize(
    ("state", "result", "stage_verdicts", "expected"),
    [
        ("Completed", "passed", ["passed"], "passed"),
        ("Reporting", None, ["passed", "skipped"], "passed"),
        ("Running", None, ["passed", "running"], "incomplete"),
        ("Cancelled", None, ["passed", "pending"], "cancelled"),
        ("FailedHolding", None, ["passed", "hold"], "hold"),
        ("Failed", None, ["passed", "running"], "failed"),  # e.g. AgentLost
        ("Completed", "failed", ["failed"], "failed"),
    ],
)
def test_run_verdicts(passed_record, state, result, stage_verdicts, expected):
    t = datetime(2026, 1, 1, tzinfo=UTC)
    rec = msgspec.structs.replace(
        passed_record,
        run=msgspec.structs.replace(
            passed_record.run, state=state, result=result, reason="agent lost: no heartbeat for 60 s"
        ),
        stages=[
            Stage(name=f"S{i}", ordinal=i, state=Verdict(v), started_at=t)
            for i, v in enumerate(stage_verdicts)
        ],
        substeps=[],
    )
    r = build_report(rec)
    assert r["verdict"] == expected
    if expected == "failed" and state == "Failed":
        assert r["summary"]["failures"] == [
            {
                "stage": None,
                "substep": None,
                "verdict": "failed",
                "reason": "agent lost: no heartbeat for 60 s",
            }
        ]


def test_unsorted_samples_and_naive_timestamps(passed_record):
    t = datetime(2026, 1, 1, 12, 0, 0)  # naive: taken as UTC
    ms = [
        Measurement(
            ts=t + timedelta(seconds=s), stage="PSU", kind="power", key="psu9", value=float(s), unit="W"
        )
        for s in (5, 1, 3, 2, 4)
    ]
    rec = msgspec.structs.replace(passed_record, measurements=ms)
    (s,) = build_report(rec)["series"]
    assert s["first"] == 1.0 and s["last"] == 5.0 and s["first_ts"] == "2026-01-01T12:00:01.000Z"


def test_plugin_sections_errors_are_reported_not_fatal(failed_record, registry):
    r = build_report(failed_record, registry)
    assert r["verdict"] == "failed"  # a section mutating its copy changes nothing
    hot = r["sections"]["hottest"]
    assert hot["error"] is None and hot["data"]["key"] == "cpu1" and hot["title"] == "Hottest sensor"
    assert r["sections"]["broken"]["error"] == "ZeroDivisionError: plugin bug"
    assert "expected ReportSection or None" in r["sections"]["junk"]["error"]
    assert "nothing" not in r["sections"]


def test_empty_record(passed_record):
    rec = msgspec.structs.replace(
        passed_record,
        stages=[],
        substeps=[],
        measurements=[],
        evaluations=[],
        inventory={},
        firmware=[],
        artifacts=[],
        events=[],
        spec_diffs=[],
    )
    r = build_report(rec)
    assert r["series"] == [] and r["charts"] == [] and r["stages"] == []
    json.dumps(r, allow_nan=False)
