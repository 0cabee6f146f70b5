"""OCPTV 2.0 export, validated against the official output schemas (vendored under
tests/fixtures/ocptv/2.0, source in the README there)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import jsonschema
import msgspec
import pytest
from referencing import Registry, Resource

from vetting_reports import ocptv_lines

SCHEMA_DIR = Path(__file__).parents[1] / "fixtures" / "ocptv" / "2.0"


@pytest.fixture(scope="module")
def validator():
    resources = []
    root = None
    for path in sorted(SCHEMA_DIR.glob("*.json")):
        doc = json.loads(path.read_text())
        resources.append((doc["$id"], Resource.from_contents(doc)))
        if path.name == "root.json":
            root = doc
    registry = Registry().with_resources(resources)
    jsonschema.Draft202012Validator.check_schema(root)
    return jsonschema.Draft202012Validator(root, registry=registry)


def lines_of(record):
    return [json.loads(line) for line in ocptv_lines(record)]


def check_all(validator, docs):
    for i, doc in enumerate(docs):
        errors = sorted(validator.iter_errors(doc), key=str)
        assert not errors, f"line {i}: {doc}\n{errors[0]}"
        datetime.fromisoformat(doc["timestamp"].replace("Z", "+00:00"))
    assert [d["sequenceNumber"] for d in docs] == list(range(len(docs)))


def test_schema_is_really_checked(validator):
    good = {
        "sequenceNumber": 0,
        "timestamp": "2026-01-01T00:00:00Z",
        "schemaVersion": {"major": 2, "minor": 0},
    }
    assert validator.is_valid(good)
    bad_diag = {
        "sequenceNumber": 1,
        "timestamp": "2026-01-01T00:00:00Z",
        "testStepArtifact": {"testStepId": "0", "diagnosis": {"verdict": "x", "type": "BROKEN"}},
    }
    assert not validator.is_valid(bad_diag)
    extra = {
        "sequenceNumber": 1,
        "timestamp": "2026-01-01T00:00:00Z",
        "testStepArtifact": {"testStepId": "0", "measurement": {"name": "x", "value": 1, "colour": "red"}},
    }
    assert not validator.is_valid(extra)


def test_failed_run_validates_and_maps(validator, failed_record):
    docs = lines_of(failed_record)
    check_all(validator, docs)
    assert docs[0]["schemaVersion"] == {"major": 2, "minor": 0}
    start = docs[1]["testRunArtifact"]["testRunStart"]
    dut = start["dutInfo"]
    assert dut["dutInfoId"] == "b4:96:91:aa:bb:01" and dut["name"] == "web-07"
    serials = {h.get("serialNumber") for h in dut["hardwareInfos"]}
    assert {"PHAB1234001", "PHAB1234002", "S6KMNE0T500123"} <= serials
    assert {s["name"]: s["version"] for s in dut["softwareInfos"]}["bios system"] == "1.10.2"
    assert {"info": "Dell Inc. PowerEdge R650"} in dut["platformInfos"]
    assert start["parameters"]["profile"] == "deep"
    assert docs[-1]["testRunArtifact"]["testRunEnd"] == {"status": "COMPLETE", "result": "FAIL"}


def steps(docs):
    out: dict[str, list[dict]] = {}
    for d in docs:
        if "testStepArtifact" in d:
            a = d["testStepArtifact"]
            out.setdefault(a["testStepId"], []).append(a)
    return out


def test_steps_bracket_stages_with_status_and_diagnosis(failed_record):
    by_step = steps(lines_of(failed_record))
    names = {}
    for arts in by_step.values():
        assert "testStepStart" in arts[0] and "testStepEnd" in arts[-1]
        names[arts[0]["testStepStart"]["name"]] = arts
    assert list(names)[:4] == ["InventoryCheck", "SpecValidate", "Firmware", "SMART"]
    assert names["GPU"][-1]["testStepEnd"]["status"] == "SKIP"
    assert names["SMART"][-1]["testStepEnd"]["status"] == "COMPLETE"
    diags = [a["diagnosis"] for a in names["SMART"] if "diagnosis" in a]
    assert {
        "verdict": "SMART-failed",
        "type": "FAIL",
        "message": "nvme1n1: reallocated sectors grew by 12 during the stage",
    } in diags
    sub = next(d for d in diags if d["verdict"] == "SMART.nvme1n1-failed")
    assert (
        sub["type"] == "FAIL"
        and sub["subcomponent"] == {"name": "nvme1n1"}
        and sub["hardwareInfoId"] == "disk1"
    )
    files = [a["file"] for a in names["Storage"] if "file" in a]
    assert files[0]["uri"] == "file:///var/lib/vetting/runs/4217/fio-nvme1n1.json"
    assert (
        files[0]["metadata"]["sha256"].startswith("9f2c1d0e")
        and files[0]["contentType"] == "application/json"
    )
    run_files = [a["file"] for a in names["RunArtifacts"] if "file" in a]
    assert run_files[0]["displayName"] == "inventory.json"
    logs = [a["log"] for a in names["Burn"] if "log" in a]
    assert any(lg["severity"] == "ERROR" and "temp cpu* ≤ 85 °C" in lg["message"] for lg in logs)
    spec_logs = [a["log"]["message"] for a in names["SpecValidate"] if "log" in a]
    assert any("nics[eno2].speed_mbps" in m for m in spec_logs)


def test_measurements_carry_validators_from_thresholds(failed_record):
    by_step = steps(lines_of(failed_record))
    ms = {
        a["measurement"]["name"]: a["measurement"]
        for arts in by_step.values()
        for a in arts
        if "measurement" in a
    }
    nv = ms["throughput:nvme1n1:min"]
    # within_pct 10 % of 3000 → the ≥/≤ pair
    assert [(v["type"], v["value"]) for v in nv["validators"]] == [
        ("GREATER_THAN_OR_EQUAL", 2700.0),
        ("LESS_THAN_OR_EQUAL", 3300.0),
    ]
    assert nv["unit"] == "MB/s" and nv["hardwareInfoId"] == "disk1" and nv["metadata"]["statistic"] == "min"
    assert nv["value"] < 2700  # the breach is visible to any OCPTV consumer
    hot = ms["temp:cpu1:max"]
    hottest = max(m.value for m in failed_record.measurements if m.key == "cpu1" and m.stage == "Burn")
    assert hot["value"] == hottest > 85 and hot["validators"][0] == {
        "name": "temp cpu* ≤ 85 °C",
        "type": "LESS_THAN_OR_EQUAL",
        "value": 85,
    }
    delta = ms["smart:nvme1n1/reallocated_sectors:delta"]
    assert delta["value"] == 12 and delta["validators"][0]["type"] == "LESS_THAN_OR_EQUAL"
    assert delta["hardwareInfoId"] == "disk1"
    link = ms["link:eno1:text"]
    assert link["value"] == "up" and link["validators"][0] == {
        "name": "link ~ '^up$'",
        "type": "REGEX_MATCH",
        "value": "^up$",
    }
    assert "validators" not in ms["temp:exhaust:max"]  # no rule for it


def test_passed_and_failed_outside_stages(validator, passed_record):
    docs = lines_of(passed_record)
    check_all(validator, docs)
    assert docs[-1]["testRunArtifact"]["testRunEnd"] == {"status": "COMPLETE", "result": "PASS"}
    lost = msgspec.structs.replace(
        passed_record,
        run=msgspec.structs.replace(
            passed_record.run, state="Failed", reason="AgentLost: no heartbeat for 60 s"
        ),
        stages=[msgspec.structs.replace(passed_record.stages[0], state="running", completed_at=None)],
        substeps=[],
    )
    docs = lines_of(lost)
    check_all(validator, docs)
    errors = [d["testStepArtifact"]["error"] for d in docs if "error" in d.get("testStepArtifact", {})]
    assert errors == [{"symptom": "stage-incomplete", "message": "stage ended running"}]
    run_err = [d["testRunArtifact"]["error"] for d in docs if "error" in d.get("testRunArtifact", {})]
    assert run_err == [{"symptom": "run-failed", "message": "AgentLost: no heartbeat for 60 s"}]
    assert docs[-1]["testRunArtifact"]["testRunEnd"] == {"status": "COMPLETE", "result": "FAIL"}


def test_hostile_and_empty_values_still_validate(validator, failed_record):
    rec = msgspec.structs.replace(
        failed_record,
        host=msgspec.structs.replace(failed_record.host, mac="", name='we"b\n07'),
        inventory={"disks": "not a list", "cpu": {"model": None}, "memory": {"dimms": [1, None]}},
        firmware=[],
    )
    check_all(validator, lines_of(rec))
