"""GPU: parsers on public/realistic captures, backend choice, the skip path, and a
real run on a machine with an NVIDIA GPU (``-m gpu``)."""

from __future__ import annotations

import pytest

from vetting_core.model import Verdict
from vetting_stages.gpu import dcgmi, gpu_burn, nvidia_smi, xid
from vetting_stages.gpu.burner import parse_output as parse_burner
from vetting_stages.gpu.detect import applies, pci_gpus
from vetting_stages.gpu.nominal import expected_tflops, lookup
from vetting_stages.gpu.nvml import BAD_THROTTLE, decode_throttle
from vetting_stages.gpu.sources import counters_from_row, static_from_row, telemetry_from_row
from vetting_stages.gpu.stage import STAGE as GPU
from vetting_stages.gpu.stage import choose_backend

from ..helpers import run_stage

UP = "gpu_burn/unversioned"


def burn(fixtures, name):
    return gpu_burn.parse((fixtures / UP / name).read_text())


def test_gpu_burn_faulty_despite_exit_0(fixtures):
    rep = burn(fixtures, "16gpu-faulty-exit0.txt")
    assert rep.tested == 16 and len(rep.gpus) == 16
    fails = rep.failures()
    assert set(fails) == set(range(16)) and all("FAULTY" in v for v in fails.values())
    assert rep.gpus[1].errors == 524288000 and rep.gpus[0].errors == 0
    assert rep.gpus[10].gflops == [6660.0] and rep.gpus[15].temps_c == [52.0]


def test_gpu_burn_pass(fixtures):
    text = (fixtures / UP / "k80-1gpu-ok.txt").read_text() + "\nTested 1 GPUs:\n\tGPU 0: OK\n"
    rep = gpu_burn.parse(text)
    assert rep.failures() == {}
    assert rep.gpus[0].name == "Tesla K80"
    assert rep.gpus[0].sustained_gflops == 2085.0


def test_gpu_burn_ok_but_no_work_fails(fixtures):
    rep = burn(fixtures, "v100-8gpu-cuda-unknown-ok-but-zero.txt")
    fails = rep.failures()
    assert "did no work" in fails[0] and "CUDA_ERROR_UNKNOWN" in fails[0]
    assert fails[7] == "no verdict printed for this GPU"  # issue text truncated after GPU 3
    assert "did no work" in burn(fixtures, "a2000-1gpu-no-progress-ok.txt").failures()[0]


def test_gpu_burn_died_and_no_verdict(fixtures):
    died = burn(fixtures, "8gpu-died.txt")
    assert died.aborted and all(g.died for g in died.gpus.values())
    assert died.failures()[0] == "worker died (DIED!)"
    partial = burn(fixtures, "2gpu-1080-progress.txt")
    assert set(partial.failures()) == {0, 1}
    assert partial.gpus[1].temps_c[-1] == 83.0
    assert gpu_burn.parse("garbage\n").failures() == {-1: "gpu_burn produced no progress and no verdict"}


def test_gpu_burn_argv():
    assert gpu_burn.build_argv(59.6) == ["gpu_burn", "-tc", "60"]
    assert gpu_burn.build_argv(10, doubles=True) == ["gpu_burn", "-d", "10"]


def test_dcgmi_real_3x_output_with_nulls_and_warning_prefix(fixtures):
    rep = dcgmi.parse((fixtures / "dcgmi/3.1.0/diag-r1-pass-8gpu.txt").read_text())
    assert rep.version == "3.1.0"
    assert len(rep.results) == 9 + 8  # 9 deployment tests for all GPUs + software per GPU
    assert rep.failures() == [] and rep.gpu_failures(7) == []


def test_dcgmi_failure_attributed_to_gpus(fixtures):
    rep = dcgmi.parse((fixtures / "dcgmi/1.7/diag-r1-persistence-fail.json").read_text())
    (fail,) = rep.failures()
    assert fail.test == "Persistence Mode" and fail.gpus == [0, 1, 2, 3]
    assert "nvidia-smi -i 1 -pm 1" in fail.messages[0]
    assert rep.gpu_failures(2) == [fail] and rep.gpu_failures(4) == []
    assert sum(r.status == "skip" for r in rep.results) == 4


def test_dcgmi_4x_shape():
    text = (
        '{"version": "4.2.3", "tests": [{"name": "memory", "results": ['
        '{"entity_group": "GPU", "entity_id": 0, "status": "Pass"},'
        '{"entity_group": "GPU", "entity_id": 1, "status": "Fail", "warnings": [{"warning": "DBE"}]}]}]}'
    )
    rep = dcgmi.parse(text)
    assert [f.gpus for f in rep.failures()] == [[1]] and rep.failures()[0].messages == ["DBE"]


@pytest.mark.parametrize("text", ["", "Error: unable to connect to host engine", "{not json", '{"x": 1}',
                                  '{"DCGM GPU Diagnostic": {"runtime_error": "no GPUs"}}'])
def test_dcgmi_bad_output(text):
    with pytest.raises(dcgmi.DcgmParseError):
        dcgmi.parse(text)


def test_xid_parse(fixtures):
    events = xid.parse((fixtures / "dmesg/unversioned/xid-examples.txt").read_text())
    assert [(e.pci, e.xid) for e in events] == [("0000:01:00", 94), ("0000:01:00", 94), ("0000:3b:00", 79)]
    assert xid.pci_key("00000000:3B:00.0") == "0000:3b:00"
    assert xid.count_by_gpu(events)["0000:01:00"] == 2
    assert 79 in xid.HARDWARE_XIDS


def test_nvidia_smi_csv(fixtures):
    rows = nvidia_smi.parse_csv((fixtures / "nvidia-smi/synthetic/h100x2-query-gpu.csv").read_text())
    good, sick = rows
    s0 = static_from_row(good)
    assert s0["name"] == "NVIDIA H100 80GB HBM3" and s0["memory_mib"] == 81559 and s0["ecc_current"] is True
    assert s0["serial"] == "1652922014123" and s0["pcie_width_max"] == 16
    s1 = static_from_row(sick)
    assert (s1["pcie_gen_current"], s1["pcie_width_current"], s1["ecc_current"]) == (4, 8, False)
    t1 = telemetry_from_row(sick)
    assert t1["temp_c"] == 88.0 and set(t1["throttle"]) & BAD_THROTTLE == {"hw_slowdown", "hw_thermal_slowdown"}
    c1 = counters_from_row(sick)
    assert c1["ecc_dbe_volatile"] == 1 and c1["retired_pages_pending"] == 1.0
    assert telemetry_from_row(good)["throttle"] == ["gpu_idle"]
    with pytest.raises(ValueError, match="columns"):
        nvidia_smi.parse_csv("index, name\n0, NVIDIA H100, 81559\n")


def _smi(fixtures, name):
    return nvidia_smi.parse_csv((fixtures / "nvidia-smi" / name).read_text())


def test_nvidia_smi_real_h100_captures(fixtures):
    """Driver 590.48.01, 212 fields with units, the newer clocks_event_reasons names,
    [N/A], [Requested functionality has been deprecated], bare N/A and an empty field."""
    (row,) = _smi(fixtures, "590.48.01/h100-80gb-hbm3-idle.csv")
    assert len(row) == 212 and row["platform.chassis_serial_number"] is None
    s = static_from_row(row)
    assert (s["name"], s["memory_mib"], s["driver"], s["vbios"]) == ("NVIDIA H100 80GB HBM3", 81559, "590.48.01", "96.00.A5.00.01")
    assert s["serial"] == "0000000000000"  # identities stay text: leading zeros kept
    assert (s["pcie_gen_current"], s["pcie_gen_max"], s["pcie_width_current"], s["ecc_current"]) == (5, 5, 16, True)
    t = telemetry_from_row(row)
    assert t["throttle"] == ["gpu_idle"] and t["power_w"] == 69.85 and t["util_pct"] == 0.0 and t["sm_clock_mhz"] > 0
    c = counters_from_row(row)
    assert c == {"ecc_sbe_volatile": 0.0, "ecc_dbe_volatile": 0.0, "ecc_sbe_aggregate": 0.0, "ecc_dbe_aggregate": 0.0}
    # the same GPU with MIG on: no utilisation at all, the rest unchanged
    (mig,) = _smi(fixtures, "590.48.01/h100-80gb-hbm3-mig-idle.csv")
    assert mig["mig.mode.current"] == "Enabled" and mig["utilization.gpu"] is None
    assert "util_pct" not in telemetry_from_row(mig) and static_from_row(mig)["memory_mib"] == 81559


def test_nvidia_smi_real_consumer_and_error_captures(fixtures):
    # Windows, driver 471.11: the older clocks_throttle_reasons names, every ECC field [N/A]
    (row,) = _smi(fixtures, "471.11/rtx2080super-windows.csv")
    assert len(row) == 115 and static_from_row(row)["ecc_current"] is None and counters_from_row(row) == {}
    assert telemetry_from_row(row)["throttle"] == ["gpu_idle"] and row["temperature.memory"] is None
    # nounits: the header keeps [W], the values have none; "[Unknown Error]" is no value
    (row,) = _smi(fixtures, "442.19/rtx2080ti-nounits-unknown-error.csv")
    assert (row["power.draw"], row["power.limit"], row["power.default_limit"]) == (228.82, 210.0, None)
    # eight L40S at idle: the link trains down to gen 1 of 4 (the stage judges the gen seen under load)
    rows = _smi(fixtures, "unversioned/l40s-8gpu-pcie-idle.csv")
    assert len(rows) == 8
    assert {(static_from_row(r)["pcie_gen_current"], static_from_row(r)["pcie_gen_max"]) for r in rows} == {(1, 4)}


def test_nvidia_smi_csv_any_field_order_units_and_failures():
    rows = nvidia_smi.parse_csv(
        "name, clocks_event_reasons.active, memory.total [MiB], power.draw [W]\n"
        "NVIDIA A100-SXM4-80GB, 0x0000000000000004, 81920 MiB, [N/A]\n"
    )
    assert rows == [{"name": "NVIDIA A100-SXM4-80GB", "clocks_throttle_reasons.active": 4.0,
                     "memory.total": 81920.0, "power.draw": None}]
    assert telemetry_from_row(rows[0])["throttle"] == ["sw_power_cap"]
    assert nvidia_smi.parse_csv("") == []
    no_driver = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n"
    with pytest.raises(ValueError, match="no CSV header: NVIDIA-SMI has failed"):
        nvidia_smi.parse_csv(no_driver)


def test_throttle_decode():
    assert decode_throttle(0x4) == ["sw_power_cap"]
    assert decode_throttle(0x48) == ["hw_slowdown", "hw_thermal_slowdown"]
    assert decode_throttle(0) == []


def test_nominal_table():
    h100 = lookup("NVIDIA H100 80GB HBM3")
    assert h100 and h100.spec_bf16 == pytest.approx(989.4)
    assert lookup("NVIDIA H100 PCIe").name == "H100 PCIe 80GB"
    assert lookup("NVIDIA GH200 480GB").name == "GH200"
    assert lookup("Tesla K80") is None
    assert 600 < expected_tflops("NVIDIA H100 80GB HBM3") < 989.4


def test_burner_output_parser():
    text = '{"t": 1.0, "tflops": 700.1, "errors": 0}\nnoise\n{"final": true, "tflops_sustained": 701.0, "errors": 0}\n'
    intervals, final = parse_burner(text)
    assert [i["tflops"] for i in intervals] == [700.1] and final["tflops_sustained"] == 701.0
    assert parse_burner("Traceback...\n") == ([], None)


def test_backend_choice_here():
    backend, why = choose_backend("auto")
    if backend is None:
        assert "dcgmi" in why and "torch" in why
    assert choose_backend("nonsense")[0] is None


def test_applies_reasons(tmp_path):
    assert applies({"gpus": [{"index": 0, "name": "NVIDIA H100 80GB HBM3"}]}) is None
    assert applies({"pci": [{"address": "0000:18:00.0", "vendor_id": "10de", "class_id": "0302"}]}) is None
    # a PCI tree with an NVIDIA 3D controller, as sysfs lays it out
    dev = tmp_path / "0000:18:00.0"
    dev.mkdir()
    (dev / "vendor").write_text("0x10de\n")
    (dev / "class").write_text("0x030200\n")
    assert pci_gpus(tmp_path) == ["0000:18:00.0"]
    assert applies({}, pci_root=tmp_path) is None
    (dev / "vendor").write_text("0x8086\n")
    reason = applies({"gpus": []}, pci_root=tmp_path)
    assert reason.startswith("no NVIDIA GPU found (") and "inventory lists no GPU" in reason


@pytest.mark.anyio
async def test_stage_skipped_without_gpu(tmp_path):
    if pci_gpus():
        pytest.skip("this machine has an NVIDIA GPU")
    res, sink = await run_stage(GPU, tmp_path, inventory={"gpus": [], "nics": []})
    assert res.verdict is Verdict.skipped
    assert res.reason.startswith("no NVIDIA GPU found (")
    assert any("skipped: no NVIDIA GPU found" in line.message for line in sink.lines)


@pytest.mark.gpu
@pytest.mark.anyio
async def test_real_gpu_stage(tmp_path):
    """On a GPU machine: ``pytest -m gpu tests/stages/gpu`` (needs nvidia-ml-py; the
    burn uses dcgmi/gpu_burn/torch, whichever is installed)."""
    if not pci_gpus():
        pytest.skip("no NVIDIA GPU on this machine")
    pytest.importorskip("pynvml", reason="nvidia-ml-py (vetting[gpu]) not installed")
    res, sink = await run_stage(GPU, tmp_path, params={"duration_s": 30, "tflops_duration_s": 30})
    print(res.verdict, res.reason, res.summary)
    for step in res.substeps:
        print(step.name, step.state, step.reason, step.summary)
    assert res.verdict in (Verdict.passed, Verdict.failed)
    assert res.summary["gpus"], "NVML inventory collected"
    assert any(s.kind == "gpu_temp" for s in sink.samples), "telemetry sampled during the burn"
    if res.summary.get("backend") == "builtin":
        assert all("tflops" in s.summary for s in res.substeps)


def test_one_command_entry_point_skips_here(tmp_path):
    """``python -m vetting_stages.gpu`` is the one command for a GPU server."""
    import subprocess
    import sys

    if pci_gpus():
        pytest.skip("this machine has an NVIDIA GPU (covered by -m gpu)")
    out = subprocess.run(
        [sys.executable, "-m", "vetting_stages.gpu", "--duration", "1", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2, out.stderr
    assert "GPU stage: skipped — no NVIDIA GPU found (" in out.stdout


@pytest.mark.anyio
async def test_stage_judgement_with_nvidia_smi_fallback(tmp_path, fixtures, monkeypatch):
    """No GPU here, so ``nvidia-smi`` is a script replaying the realistic H100 CSV
    (the edge of the machine); everything else — fallback source, per-GPU checks,
    sub-steps, counters, the no-burn-backend verdict — is the real stage."""
    from vetting_stages.gpu import nvml

    if nvml.load() is not None:
        pytest.skip("NVML works here: the stage would use it, not the nvidia-smi fallback")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    csv = fixtures / "nvidia-smi/synthetic/h100x2-query-gpu.csv"
    script = bindir / "nvidia-smi"
    script.write_text(f"#!/bin/sh\ncat '{csv}'\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{__import__('os').environ['PATH']}")
    inventory = {"gpus": [{"index": 0, "name": "NVIDIA H100 80GB HBM3"}, {"index": 1, "name": "NVIDIA H100 80GB HBM3"}]}
    res, sink = await run_stage(GPU, tmp_path / "wd", params={"backend": "builtin", "require_burn": False},
                                inventory=inventory)
    steps = {s.name: s for s in res.substeps}
    assert res.summary["source"] == "nvidia-smi"
    assert steps["gpu0"].state is Verdict.passed, steps["gpu0"].reason
    assert steps["gpu0"].summary["sku"] == "H100 SXM5 80GB"
    bad = steps["gpu1"]
    assert bad.state is Verdict.failed
    for needle in ("ECC is disabled", "PCIe link x8, board supports x16", "memory repair pending"):
        assert needle in bad.reason
    assert res.verdict is Verdict.failed and res.reason.startswith("gpu1: ")
    dbe = [s for s in sink.samples if s.kind == "gpu_counter" and s.key == "gpu1/ecc_dbe_volatile"]
    assert [s.value for s in dbe] == [1.0, 1.0]  # before and after: no growth during the stage


@pytest.mark.anyio
async def test_burn_judgements_rate_xid_and_temperature(tmp_path, fixtures, monkeypatch):
    """The judgements of a burn, with the edge of the machine scripted (no GPU here):
    ``nvidia-smi`` replays the two-H100 CSV, ``gpu_burn`` replays a captured K80 run
    (about 2 TFLOP/s, cut off before its OK/FAULTY verdict, exit 0), and ``dmesg`` shows
    an Xid 79 for GPU 0 only after the burn. The stage must fail GPU 0 for the new Xid,
    the missing verdict and its rate, and GPU 1 for its 88 °C."""
    from vetting_stages.gpu import nvml

    if nvml.load() is not None:
        pytest.skip("NVML works here: the stage would use it, not the nvidia-smi fallback")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    state = tmp_path / "dmesg-calls"
    scripts = {
        "nvidia-smi": f"cat '{fixtures / 'nvidia-smi/synthetic/h100x2-query-gpu.csv'}'",
        "gpu_burn": f"sleep 1; cat '{fixtures / 'gpu_burn/unversioned/k80-1gpu-ok.txt'}'",  # sampled while it runs
        # the first call (before the burn) shows an old Xid of another GPU; the second a new one on GPU 0
        "dmesg": (f"echo '[ 10.0] NVRM: Xid (PCI:0000:3b:00): 13, pid=1, Graphics Exception'\n"
                  f"if [ -e '{state}' ]; then echo '[ 99.0] NVRM: Xid (PCI:0000:18:00): 79, pid=0, GPU has fallen off the bus.'; fi\n"
                  f"touch '{state}'"),
    }
    for name, body in scripts.items():
        script = bindir / name
        script.write_text(f"#!/bin/sh\n{body}\n")
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{__import__('os').environ['PATH']}")
    inventory = {"gpus": [{"index": 0, "name": "NVIDIA H100 80GB HBM3"}, {"index": 1, "name": "NVIDIA H100 80GB HBM3"}]}
    res, sink = await run_stage(GPU, tmp_path / "wd", inventory=inventory, params={
        "backend": "gpu_burn", "duration_s": 1, "sample_interval_s": 0.1, "require_ecc": False, "check_pcie_gen": False,
    })
    assert res.summary["backend"] == "gpu_burn"
    steps = {s.name: s for s in res.substeps}
    gpu0, gpu1 = steps["gpu0"], steps["gpu1"]
    assert gpu0.state is Verdict.failed
    assert "1 new Xid event(s): [79]" in gpu0.reason
    assert "no verdict printed for this GPU" in gpu0.reason
    assert "2 TFLOP/s sustained is 0% of the nominal 712" in gpu0.reason and 2.0 < gpu0.summary["tflops"] < 2.3
    assert [m.value for m in sink.samples if m.key == "gpu0/xid_events"] == [0, 1]
    assert gpu1.state is Verdict.failed and "temperature reached 88 °C (limit" in gpu1.reason
    assert "Xid" not in gpu1.reason and res.verdict is Verdict.failed
