"""stress-ng parsing and verdicts, on captures from 0.15.06 (here) and public issues."""

from __future__ import annotations

import pytest

from vetting_stages.cpu.stressng import (
    EXIT_CODES,
    StressNgParseError,
    build_argv,
    judge,
    parse_log,
    parse_thermal_log,
    parse_yaml,
)


def load(fixtures, name, stressors, version="0.15.06"):
    d = fixtures / "stress-ng" / version
    log = (d / f"{name}.log").read_text()
    rc_file = d / f"{name}.rc"
    rc = int(rc_file.read_text()) if rc_file.exists() else None
    yml = d / f"{name}.yaml"
    report = parse_yaml(yml.read_text()) if yml.exists() else None
    return judge(stressors, rc, parse_log(log, stressors), report)


def test_exit_codes_documented():
    # stress-ng(1) EXIT STATUS, 0.15.06
    assert set(EXIT_CODES) == set(range(8))
    assert "skipped" in EXIT_CODES[3] and "skipped" in EXIT_CODES[4]


def test_yaml_metrics_parsed(fixtures):
    rep = parse_yaml((fixtures / "stress-ng/0.15.06/multi-pass.yaml").read_text())
    assert rep.version == "0.15.06"
    assert set(rep.metrics) == {"cpu", "zlib", "matrix"}
    assert rep.metrics["cpu"].bogo_ops_per_s_real == pytest.approx(1470.302530)
    assert rep.metrics["zlib"].extra["mbsec-compression-rate"] == pytest.approx(3.569060)
    assert rep.thermal == {}  # no thermal zones on the capture VM


def test_pass(fixtures):
    j = load(fixtures, "cpu-matrixprod-pass", ["cpu"])
    assert j.verdict == "passed"
    assert j.stressors["cpu"].metrics.bogo_ops_per_s_real == pytest.approx(1066.877591)


def test_unsupported_stressor_exit0_is_skip_not_pass(fixtures):
    # rdrand on a non-Intel CPU: stress-ng exits 0 and writes no YAML
    j = load(fixtures, "rdrand-unsupported", ["rdrand"])
    assert j.verdict == "skipped"
    assert "not a recognised Intel CPU" in j.reason


def test_no_resource_exit3_is_skip(fixtures):
    j = load(fixtures, "uprobe-no-resource", ["uprobe"])
    assert j.verdict == "skipped"
    assert "out of system resources" in j.reason


def test_killed_worker_fails(fixtures):
    j = load(fixtures, "cpu-killed", ["cpu"])
    assert j.verdict == "failed"
    assert "corrupted bogo-ops counter" in j.reason


def test_bad_option_fails_with_stress_ng_message(fixtures):
    j = load(fixtures, "bad-option", ["cpu"])
    assert j.verdict == "failed"
    assert "unrecognized option" in j.reason


def test_public_vm_bit_errors_fail(fixtures):
    log = (fixtures / "stress-ng/unversioned/vm-bit-errors-issue546.log").read_text()
    j = judge(["vm"], 2, parse_log(log, ["vm"]), None)
    assert j.verdict == "failed"
    assert "bit errors" in j.stressors["vm"].reason


def test_public_partial_enomem_still_passes(fixtures):
    # 2 of 192 instances skipped for ENOMEM, 190 passed, exit 3: the stressor ran
    log = (fixtures / "stress-ng/unversioned/vm-mmap-skips-issue533.log").read_text()
    summary = parse_log(log, ["vm"])
    assert "vm" in summary.passed and summary.skipped["vm"] == "out of system resources"
    assert judge(["vm"], 3, summary, None).verdict == "passed"


def test_public_all_disabled_is_skip(fixtures):
    log = (fixtures / "stress-ng/unversioned/oom-pipe-all-skipped-checkbox800.log").read_text()
    j = judge(["oom-pipe"], 0, parse_log(log, ["oom-pipe"]), None)
    assert j.verdict == "skipped"
    assert "pathological" in j.reason or "hang" in j.reason


def test_silent_stressor_is_a_failure():
    # asked for a stressor, no metrics, no message, exit 0: we cannot prove it ran
    j = judge(["cpu"], 0, parse_log("", ["cpu"]), None)
    assert j.verdict == "failed"


def test_timeout_fails_even_with_metrics(fixtures):
    d = fixtures / "stress-ng/0.15.06"
    rep = parse_yaml((d / "cpu-matrixprod-pass.yaml").read_text())
    j = judge(["cpu"], None, parse_log("", ["cpu"]), rep, timed_out=True)
    assert j.verdict == "failed" and "killed" in j.reason


@pytest.mark.parametrize("text", ["", "not: [yaml", "- just\n- a list\n"])
def test_bad_yaml_is_a_clear_error(text):
    with pytest.raises(StressNgParseError):
        parse_yaml(text)


def test_yaml_without_rate_is_rejected():
    with pytest.raises(StressNgParseError, match="bogo-ops-per-second-real-time"):
        parse_yaml("metrics:\n  - stressor: cpu\n    bogo-ops: 5\n")


def test_thermal_zone_lines():
    log = (
        "stress-ng: info:  [10] cpu:\n"
        "stress-ng: info:  [10]  x86_pkg_temp            52.00 C (325.15 K)\n"
        "stress-ng: info:  [10]  acpitz                  40.00 C (313.15 K)\n"
    )
    assert parse_thermal_log(log) == {"cpu": {"x86_pkg_temp": 52.0, "acpitz": 40.0}}


def test_argv_rejects_injection():
    with pytest.raises(ValueError):
        build_argv({"cpu; rm -rf /": 1}, duration_s=1, yaml_path="/tmp/x")
    argv = build_argv({"cpu": 0}, duration_s=2.4, yaml_path="/tmp/x.yaml", options=["--cpu-method", "int64"])
    assert argv[:3] == ["stress-ng", "--cpu", "0"] and "--verify" in argv and "2s" in argv
