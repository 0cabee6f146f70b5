"""The spec-diff engine on a realistic 2-socket / 8 NVMe / 8 GPU server."""

from __future__ import annotations

import pytest

from vetting_core.model import Severity
from vetting_core.specdiff import SpecError, critical, diff_spec, parse_spec, spec_from_dict, spec_to_dict

from .realistic import docs_example_yaml, fresh


@pytest.fixture
def spec():
    return parse_spec(docs_example_yaml())


def fields(diffs, severity=None):
    return {d.field for d in diffs if severity is None or d.severity is severity}


def test_documented_example_parses_and_round_trips(spec):
    assert spec.cpu.sockets == 2 and spec.disks[0].count == 8 and spec.gpus[0].count == 8
    assert spec.firmware["bmc"] == ["01.03.16", "01.04.02"]
    assert spec.thresholds[0].kind == "gpu_temp" and spec.params["Storage"]["runtime_s"] == 30
    assert spec_from_dict(spec_to_dict(spec)) == spec


def test_matching_inventory_has_no_critical_or_warning(spec):
    diffs = diff_spec(spec, fresh())
    assert critical(diffs) == []
    assert fields(diffs, Severity.warning) == set()
    # the USB stick is noted, not counted
    assert [d.field for d in diffs] == ["disks[sdc]"] and diffs[0].severity is Severity.info


def test_missing_dimm_is_critical(spec):
    inv = fresh()
    gone = inv["memory"]["dimms"].pop(5)
    inv["memory"]["total_gib"] -= gone["size_gib"]
    diffs = diff_spec(spec, inv)
    crit = {d.field: d for d in critical(diffs)}
    assert crit["memory.dimm_count"].expected == "32" and crit["memory.dimm_count"].actual == "31"
    assert "memory.total_gib" in crit  # 1984 GiB is 3 % short, outside 1 %


def test_pcie_x8_instead_of_x16_is_critical(spec):
    inv = fresh()
    inv["pci"][3]["current_width"] = 8
    crit = critical(diff_spec(spec, inv))
    assert [d.field for d in crit] == ["pcie[0000:5d:00.0].width"]
    assert crit[0].expected == "x16" and crit[0].actual == "x8"


def test_pcie_idle_speed_drop_is_only_a_warning_without_explicit_speed(spec):
    inv = fresh()
    nic = next(p for p in inv["pci"] if p["vendor_id"] == "15b3")
    nic["current_speed_gts"] = 2.5
    diffs = diff_spec(spec, inv)
    assert critical(diffs) == []
    assert f"pcie[{nic['address']}].speed_gts" in fields(diffs, Severity.warning)
    gpu = inv["pci"][0]
    gpu["current_speed_gts"] = 16.0  # spec says speed_gts: 32 for the GPUs
    assert f"pcie[{gpu['address']}].speed_gts" in fields(critical(diff_spec(spec, inv)))


def test_wrong_gpu_count(spec):
    inv = fresh()
    inv["gpus"].pop()
    inv["pci"].pop(7)
    crit = critical(diff_spec(spec, inv))
    assert {d.field for d in crit} == {"gpus[0].count", "pcie[0].count"}
    extra = fresh()
    extra["gpus"].append(dict(extra["gpus"][0], index=8))
    diffs = diff_spec(spec, extra)
    assert critical(diffs) == [] and "gpus[0].count" in fields(diffs, Severity.warning)


@pytest.mark.parametrize(
    ("total", "dimms_known", "expect"),
    [
        (2048 * 0.991, True, None),  # 0.9 % short: within 1 %
        (2048 * 0.985, True, Severity.critical),  # 1.5 % short
        (2048 * 1.02, True, Severity.warning),  # more than ordered
        (2015.6, False, None),  # MemTotal only: within os_tolerance_pct (5 %)
        (1900.0, False, Severity.critical),  # MemTotal 7 % short
    ],
)
def test_memory_tolerance(spec, total, dimms_known, expect):
    inv = fresh()
    if dimms_known:
        inv["memory"]["total_gib"] = total
    else:
        inv["memory"] = {"total_gib": total, "os_total_gib": total, "dimms": []}
        inv["unavailable"]["memory.dimms"] = "dmidecode: /dev/mem: Permission denied"
    diffs = [d for d in diff_spec(spec, inv) if d.field == "memory.total_gib"]
    assert (diffs[0].severity if diffs else None) is expect
    if not dimms_known:  # the DIMM checks say why they could not run
        warn = [d for d in diff_spec(spec, inv) if d.field == "memory.dimms"]
        assert warn and warn[0].severity is Severity.warning and "Permission denied" in warn[0].message


def test_firmware_mismatch_is_critical_and_allowed_list_works(spec):
    inv = fresh()
    inv["bmc"]["firmware"] = "01.04.02"  # the second allowed version
    assert critical(diff_spec(spec, inv)) == []
    inv["system"]["bios_version"] = "1.9"
    inv["nics"][1]["firmware"] = "28.36.1010"
    crit = {d.field: d for d in critical(diff_spec(spec, inv))}
    assert crit["firmware.bios"].actual == "1.9" and crit["firmware.bios"].expected == "2.1"
    assert crit["firmware.nic[*mlx5_core]"].actual == "28.36.1010"
    assert len(crit) == 2


def test_missing_sections_are_warnings_not_crashes(spec):
    inv = fresh()
    del inv["bmc"]
    inv["unavailable"]["bmc"] = "no /dev/ipmi0"
    diffs = diff_spec(spec, inv)
    assert critical(diffs) == []
    bmc = [d for d in diffs if d.field == "firmware.bmc"]
    assert bmc[0].severity is Severity.warning and "no /dev/ipmi0" in bmc[0].message


def test_gpus_unavailable_is_critical_when_spec_wants_them(spec):
    inv = fresh()
    inv["gpus"] = []
    inv["unavailable"]["gpus"] = "NVML: NVMLError_DriverNotLoaded"
    crit = critical(diff_spec(spec, inv))
    assert any(d.field == "gpus.count" and "DriverNotLoaded" in d.message for d in crit)


def test_disk_count_and_surprise_disk(spec):
    inv = fresh()
    inv["disks"] = [d for d in inv["disks"] if d["name"] != "nvme7n1"]
    inv["disks"].append({"name": "sdd", "path": "/dev/sdd", "model": "ST4000NM0043", "size_bytes": 4000787030016, "transport": "sas"})
    diffs = diff_spec(spec, inv)
    assert fields(critical(diffs)) == {"disks[0].count"}
    assert "disks[sdd]" in fields(diffs, Severity.warning)


def test_nic_negotiated_slower_is_critical(spec):
    inv = fresh()
    inv["nics"][0]["speed_mbps"] = 100000
    inv["nics"][2]["speed_mbps"] = None  # ice port without link: link_required false
    inv["nics"][2]["link"] = "down"
    crit = critical(diff_spec(spec, inv))
    assert fields(crit) == {"nics[ens0np0].speed_mbps"}


def test_cpu_model_and_topology(spec):
    inv = fresh()
    inv["cpu"].update(model="Intel(R) Xeon(R) Gold 6430", sockets=1, cores=32, threads=64)
    assert fields(critical(diff_spec(spec, inv))) >= {"cpu.model", "cpu.sockets", "cpu.cores", "cpu.threads"}


# -- hostile / wrong input -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("memory:\n  total_gib: lots\n", "$.memory.total_gib: Expected number"),
        ("memory:\n  total_gib: 12\n  dimm_cout: 4\n", "$.memory: Object contains unknown field dimm_cout"),
        ("cpu:\n  sockets: -1\n", "$.cpu.sockets"),
        ("disks:\n  - count: 8\n", "$.disks[0]: Object missing required field model"),
        ("gpus: {model: H100}\n", "$.gpus: Expected array"),
        ("firmware:\n  bios: 2.10\n", "$.firmware.bios: versions must be quoted strings, got number 2.1"),
        ("firmware:\n  nic:\n    '*mlx5*': 28.39\n", "$.firmware.nic['*mlx5*']: versions must be quoted"),
        ("thresholds:\n  - kind: x\n    op: lte\n    threshold: 1\n    colour: red\n", "$.thresholds[0]"),
        ("- just\n- a list\n", "$: Expected a mapping, got list"),
        ("", "$: the expected spec is empty"),
        ("cpu: [unclosed\n", "not valid YAML"),
        ("a: &x [1]\nb: *x\n", "anchors are not allowed"),
    ],
)
def test_bad_specs_are_rejected_naming_the_field(text, needle):
    with pytest.raises(SpecError) as exc:
        parse_spec(text)
    assert needle in str(exc.value)


def test_alias_bomb_is_rejected_quickly():
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi")
    )
    with pytest.raises(SpecError, match="not allowed"):
        parse_spec(bomb)


def test_huge_and_deep_documents_are_rejected():
    with pytest.raises(SpecError, match="limit"):
        parse_spec("description: " + "x" * (300 * 1024))
    with pytest.raises(SpecError, match="deeper"):
        parse_spec("params:\n  S:\n    k: " + "[" * 40 + "]" * 40 + "\n")
    with pytest.raises(SpecError, match=r"\$.cpu.sockets"):
        parse_spec("cpu:\n  sockets: 10000000\n")


def test_invalid_inventory_document_is_a_clear_error(spec):
    with pytest.raises(ValueError, match="invalid inventory"):
        diff_spec(spec, {"cpu": {"sockets": "two"}})


def test_an_ignored_difference_is_kept_marked_and_fails_nothing_while_the_value_holds(spec):
    # the documented example ignores memory.total_gib while it reads 1920 (two DIMMs away for repair)
    assert [(i.field, i.actual) for i in spec.ignore] == [("memory.total_gib", "1920")]
    inv = fresh()
    for _ in range(2):
        inv["memory"]["total_gib"] -= inv["memory"]["dimms"].pop()["size_gib"]
    diffs = {d.field: d for d in diff_spec(spec, inv)}
    assert diffs["memory.total_gib"].ignored and diffs["memory.total_gib"].actual == "1920"
    assert {d.field for d in critical(diffs.values())} == {"memory.dimm_count"}  # not ignored: still fails
    inv["memory"]["total_gib"] -= inv["memory"]["dimms"].pop()["size_gib"]  # a third one fails: 1856
    again = {d.field: d for d in diff_spec(spec, inv)}
    assert not again["memory.total_gib"].ignored and "memory.total_gib" in {d.field for d in critical(again.values())}
    # without `actual`, whatever the host shows
    any_value = spec_from_dict({**spec_to_dict(spec), "ignore": [{"field": "memory.total_gib"}]})
    assert {d.field: d for d in diff_spec(any_value, inv)}["memory.total_gib"].ignored
