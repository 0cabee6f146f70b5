"""The one hwmon reader: order, keys and units that the stages and the sidecar share."""

from __future__ import annotations

from pathlib import Path

import pytest

from vetting_core import hwmon


def chip(root: Path, n: int, name: str | None, files: dict[str, str]) -> None:
    d = root / f"hwmon{n}"
    d.mkdir(parents=True)
    if name is not None:
        (d / "name").write_text(name + "\n")
    for f, v in files.items():
        (d / f).write_text(v + "\n")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    # registered in this order: hwmon2 before hwmon10, though "hwmon10" < "hwmon2" as text
    chip(tmp_path, 10, "nct6775", {"temp10_input": "30000", "temp2_input": "31000", "in0_input": "1104",
                                   "fan1_input": "1200", "power1_average": "95000000", "temp7_input": "garbage"})
    chip(tmp_path, 2, "coretemp", {"temp1_input": "45000", "temp1_label": "Package id 0"})
    chip(tmp_path, 3, "coretemp", {"temp1_input": "47500", "temp1_label": "Package id 1"})
    chip(tmp_path, 4, None, {"power1_input": "5000000", "power1_average": "4000000", "temp1_input": "61250",
                             "temp1_label": "\n"})
    (tmp_path / "not-a-chip").mkdir()
    return tmp_path


def test_order_keys_and_units(tree):
    got = [(ch.kind, ch.key, v, ch.unit) for ch, v in hwmon.read_all(tree)]
    assert got == [
        ("temp", "coretemp/Package id 0", 45.0, "C"),
        ("temp", "coretemp#1/Package id 1", 47.5, "C"),  # a repeated chip name stays distinct
        ("power", "hwmon4/power1", 5.0, "W"),  # no name file: the directory's name; _input over _average
        ("temp", "hwmon4/temp1", 61.25, "C"),  # an empty label: the channel's own name
        ("fan", "nct6775/fan1", 1200.0, "RPM"),
        ("volt", "nct6775/in0", pytest.approx(1.104), "V"),
        ("power", "nct6775/power1", 95.0, "W"),  # only an average: it is read
        ("temp", "nct6775/temp2", 31.0, "C"),
        ("temp", "nct6775/temp10", 30.0, "C"),  # temp2 before temp10
    ]  # nct6775/temp7 prints garbage: discovered, but no value


def test_discover_lists_unreadable_channels_and_filters_kinds(tree):
    keys = [ch.key for ch in hwmon.discover(tree, kinds={"temp"})]
    assert keys == ["coretemp/Package id 0", "coretemp#1/Package id 1", "hwmon4/temp1",
                    "nct6775/temp2", "nct6775/temp7", "nct6775/temp10"]
    assert [ch.key for ch in hwmon.discover(tree, kinds={"volt"})] == ["nct6775/in0"]


def test_read_value_follows_the_file_and_survives_its_disappearance(tree):
    ch = next(c for c in hwmon.discover(tree) if c.key == "coretemp/Package id 0")
    (tree / "hwmon2/temp1_input").write_text("52000\n")
    assert hwmon.read_value(ch) == 52.0
    (tree / "hwmon2/temp1_input").unlink()
    assert hwmon.read_value(ch) is None


def test_no_hwmon_at_all(tmp_path):
    assert hwmon.discover(tmp_path / "absent") == []
    assert hwmon.read_all(tmp_path) == []
