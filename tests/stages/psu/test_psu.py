"""PSU: ipmitool SDR parsing on captures from ipmi_sim, lm-sensors on public captures,
hwmon sysfs, rail classification, and the stage against a real simulated BMC."""

from __future__ import annotations

import pytest

from vetting_core.model import Verdict
from vetting_stages.psu import ipmi, rails, sensors
from vetting_stages.psu.stage import STAGE as PSU

from ..helpers import run_stage, samples
from tests.support.ipmisim import ipmi_sim

IPMI = "ipmitool-sdr/1.8.19"


def test_sdr_elist_parsed(fixtures):
    recs = {r.name: r for r in ipmi.parse_sdr((fixtures / IPMI / "elist-full-ps2-failed.txt").read_text())}
    assert recs["12V"].value == 12.06 and recs["12V"].unit == "Volts"
    assert recs["PS2 Status"].states == ["Presence detected", "Failure detected"]
    assert recs["PS1 Status"].problems() == []
    assert recs["PS2 Status"].problems() == ["PS2 Status: Failure detected"]
    assert recs["PS Redundancy"].problems() == ["PS Redundancy: Redundancy Lost"]
    assert [r.name for r in ipmi.voltage_records(list(recs.values()))] == ["12V", "5V", "3.3V", "5VSB"]


def test_sdr_status_column_and_noise():
    text = (
        "Unable to Get Channel Cipher Suites\n"
        "PSU1 Status      | 70h | ok  | 10.1 | Presence detected, Power Supply AC lost\n"
        "PS Redundancy    | 77h | ok  |  7.1 | Fully Redundant\n"
        "12V              | 30h | cr  |  7.1 | 10.80 Volts\n"
        "Fan1             | 41h | ns  |  7.1 | No Reading\n"
    )
    recs = {r.name: r for r in ipmi.parse_sdr(text)}
    assert len(recs) == 4
    assert recs["PSU1 Status"].problems() == ["PSU1 Status: Power Supply AC lost"]
    assert recs["PS Redundancy"].problems() == []
    assert recs["12V"].problems() == ["12V: critical (10.80 Volts)"]
    assert recs["Fan1"].states == [] and recs["Fan1"].value is None


def test_sdr_argv():
    assert ipmi.sdr_argv("power_supply") == ["ipmitool", "sdr", "type", "Power Supply"]
    argv = ipmi.sdr_argv("elist", interface={"host": "10.0.0.5", "user": "u", "password": "p", "port": 623})
    assert argv[:3] == ["ipmitool", "-I", "lanplus"] and argv[-3:] == ["sdr", "elist", "full"]


@pytest.mark.parametrize(
    "label, rail",
    [("+12V", "+12V"), ("12V", "+12V"), ("P12V", "+12V"), ("PSU1 12V Out", "+12V"), ("+5V", "+5V"),
     ("3.3V", "+3.3V"), ("P3V3", "+3.3V"), ("5VSB", "5VSB"), ("3VSB", "3VSB"), ("Vbat", "VBAT"),
     ("-12V", "-12V"), ("Vcore", None), ("DIMM", None), ("VTT", None), ("PS1 Input Voltage", None), ("in4", None)],
)
def test_rail_classification(label, rail):
    got = rails.classify(label)
    assert (got.rail if got else None) == rail


def test_rail_tolerance():
    r12 = rails.classify("+12V")
    assert rails.RailReading("s", "+12V", 12.55, r12).problem() is None
    assert "off +12V" in rails.RailReading("s", "+12V", 12.7, r12).problem()
    assert rails.RailReading("s", "+12V", 12.7, r12).problem(tolerance_pct=10) is None
    assert "below" in rails.RailReading("s", "Vbat", 2.5, rails.classify("Vbat")).problem()
    assert rails.RailReading("s", "-12V", -11.2, rails.classify("-12V")).problem() is None


def test_lm_sensors_text_captures(fixtures):
    good = sensors.parse_text((fixtures / "sensors/unversioned/nct6779-issue49.txt").read_text())
    assert good[0] == ("nct6779-isa-0290", "Vcore", 0.44) and len(good) == 14
    headless = sensors.parse_text((fixtures / "sensors/unversioned/nct6775-issue43.txt").read_text())
    assert ("", "3VSB", 3.46) in headless
    bad = sensors.parse_text((fixtures / "sensors/unversioned/nct6687-miscaled-issue36.txt").read_text())
    problems = [rails.RailReading("sensors", l, v, rails.classify(l)).problem() for _, l, v in bad if rails.classify(l)]
    assert len(problems) == 2 and all(problems)


def test_lm_sensors_json(fixtures):
    triples = sensors.parse_json((fixtures / "sensors/synthetic/nct6779-issue49.json").read_text())
    assert ("nct6779-isa-0290", "+3.3V", 3.36) in triples and len(triples) == 14
    assert sensors.parse_json((fixtures / "sensors/3.6.0/no-sensors.json").read_text()) == []
    with pytest.raises(sensors.SensorsParseError):
        sensors.parse_json("No sensors found!")


def _hwmon(root, values):
    hw = root / "hwmon0"
    hw.mkdir(parents=True)
    (hw / "name").write_text("nct6779\n")
    for i, (label, mv) in enumerate(values):
        (hw / f"in{i}_input").write_text(f"{mv}\n")
        if label:
            (hw / f"in{i}_label").write_text(f"{label}\n")
    return root


def test_hwmon_reader(tmp_path):
    root = _hwmon(tmp_path, [("+12V", 12096), (None, 850), ("3VSB", 3440)])
    assert sensors.read_hwmon(root) == [("nct6779", "+12V", 12.096), ("nct6779", "in1", 0.85), ("nct6779", "3VSB", 3.44)]


@pytest.mark.anyio
async def test_stage_skips_without_any_source(tmp_path):
    res, _ = await run_stage(PSU, tmp_path / "wd", params={"sources": ["hwmon"], "hwmon_root": str(tmp_path / "none")})
    assert res.verdict is Verdict.skipped and res.reason.startswith("no PSU telemetry")


@pytest.mark.anyio
@pytest.mark.parametrize("v12, expect", [(12096, Verdict.passed), (11020, Verdict.failed)])
async def test_stage_judges_hwmon_rails(tmp_path, v12, expect):
    root = _hwmon(tmp_path / "sys", [("+12V", v12), ("+3.3V", 3310), ("Vcore", 900)])
    res, sink = await run_stage(PSU, tmp_path / "wd", params={"sources": ["hwmon"], "hwmon_root": str(root)})
    assert res.verdict is expect, res.reason
    rail = samples(sink, "psu_rail", "+12V/hwmon:")
    assert rail and rail[0].value == pytest.approx(v12 / 1000)
    assert len(samples(sink, "voltage")) == 3  # Vcore recorded, not judged


@pytest.mark.anyio
async def test_stage_against_ipmi_sim_healthy(tmp_path):
    with ipmi_sim(tmp_path, ps2_failed=False, redundancy_lost=False) as iface:
        res, sink = await run_stage(PSU, tmp_path / "wd", params={"ipmi": iface, "sources": ["ipmi"], "expected_psus": 2})
    assert res.verdict is Verdict.passed, res.reason
    assert set(res.summary["psu"]) == {"PS1 Status", "PS2 Status", "PS Redundancy"}
    assert samples(sink, "psu_rail", "+12V/ipmi:12V")[0].value == pytest.approx(12.06)
    assert all(s.value == 1.0 for s in samples(sink, "psu_status"))
    (amps,) = samples(sink, "psu_current", "ipmi:PS1 Current")
    assert amps.value == pytest.approx(6.2) and amps.unit == "A"


@pytest.mark.anyio
async def test_stage_against_ipmi_sim_failed_psu(tmp_path):
    with ipmi_sim(tmp_path, ps2_failed=True, redundancy_lost=True, v5sb_raw=150) as iface:
        res, sink = await run_stage(PSU, tmp_path / "wd", params={"ipmi": iface, "sources": ["ipmi"]})
    assert res.verdict is Verdict.failed
    assert "PS2 Status: Failure detected" in res.reason
    assert "Redundancy Lost" in res.reason
    assert "5VSB 4.50 V" in res.reason  # 10 % low standby rail
    status = {s.key: s.value for s in samples(sink, "psu_status")}
    assert status == {"PS1 Status": 1.0, "PS2 Status": 0.0, "PS Redundancy": 0.0}


@pytest.mark.anyio
async def test_stage_unreachable_bmc_fails(tmp_path):
    iface = {"interface": "lanplus", "host": "127.0.0.1", "port": 1, "user": "a", "password": "b",
             "timeout": 1, "retries": 1}
    from ..helpers import need

    need("ipmitool")
    res, _ = await run_stage(PSU, tmp_path, params={"ipmi": iface, "sources": ["ipmi"], "ipmi_timeout_s": 20})
    assert res.verdict is Verdict.failed and "unreachable" in res.reason
