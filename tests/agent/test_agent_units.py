"""Unit tests of the agent's parts that need no orchestrator: backoff, kernel command
line, hold key, ipmitool parser, the sensor sidecar and the spool."""

from __future__ import annotations

import os
import random
import stat
from datetime import UTC, datetime
from pathlib import Path

import anyio
import msgspec
import pytest

from vetting_agent.backoff import Backoff, jittered
from vetting_agent.cmdline import CmdlineError, coordinates_from_text, parse_params, read_coordinates
from vetting_agent.hold import HoldKeyError, authorized_keys_line, install_key
from vetting_agent.sidecar import HwmonSource, SensorSidecar, ThrottleSource, parse_ipmitool_sdr
from vetting_agent.spool import KIND_LOG, KIND_SENSOR, Spool, SpoolRejected
from vetting_core.model import Measurement, Verdict
from vetting_core.protocol import LogBatch, LogLine, SensorBatch, StageResult

FIXTURES = Path(__file__).parents[1] / "fixtures"
NOW = datetime(2026, 11, 23, 1, 0, tzinfo=UTC)
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHx0ZXN0a2V5dGVzdGtleXRlc3RrZXl0ZXN0a2V5dGVzdA vetting-run-7"


# -- backoff ---------------------------------------------------------------------------
def test_backoff_grows_is_capped_jittered_and_resets():
    b = Backoff(initial=0.5, cap=4.0, rng=random.Random(1))
    delays = [b.next() for _ in range(10)]
    ceilings = [0.5, 1, 2, 4, 4, 4, 4, 4, 4, 4]
    for d, c in zip(delays, ceilings):
        assert c / 2 <= d <= c
    assert len({round(d, 6) for d in delays[4:]}) > 1  # jitter: not lock-step
    b.reset()
    assert b.next() <= 0.5
    with pytest.raises(ValueError):
        Backoff(initial=2, cap=1)
    assert all(9.0 <= jittered(10.0, 0.1) <= 11.0 for _ in range(100))


# -- kernel command line ---------------------------------------------------------------------
def test_cmdline_parses_the_ipxe_parameters():
    text = (
        'initrd=vetting.cpio console=ttyS0 quiet vetting.server=http://10.0.0.1:8080/ '
        'vetting.run=42 vetting.token=s3cr3t-T0ken root="live image" -- --init-arg vetting.run=9\n'
    )
    params = parse_params(text)
    assert params["quiet"] == "" and params["root"] == "live image"
    coords = coordinates_from_text(text)
    assert (coords.server, coords.run_id, coords.token) == ("http://10.0.0.1:8080", 42, "s3cr3t-T0ken")
    assert "s3cr3t" not in repr(coords)


@pytest.mark.parametrize(
    "text, message",
    [
        ("quiet vetting.run=1 vetting.token=x", "lacks vetting.server"),
        ("vetting.server=http://h vetting.token=x", "lacks vetting.run"),
        ("vetting.server=http://h vetting.run=1 vetting.token=", "lacks vetting.token"),
        ("vetting.server=ftp://h vetting.run=1 vetting.token=x", r"not an http\(s\) URL"),
        ("vetting.server=http://h vetting.run=abc vetting.token=x", "not a run number"),
        ("vetting.server=http://h vetting.run=-3 vetting.token=x", "not a run number"),
    ],
)
def test_cmdline_errors_name_the_parameter(text, message):
    with pytest.raises(CmdlineError, match=message):
        coordinates_from_text(text)


def test_cmdline_reads_this_machines_proc_cmdline_and_a_file(tmp_path):
    # the real /proc/cmdline of this machine has no vetting.* parameters
    with pytest.raises(CmdlineError, match="lacks vetting.server, vetting.run, vetting.token"):
        read_coordinates("/proc/cmdline")
    f = tmp_path / "cmdline"
    real = Path("/proc/cmdline").read_text().strip()
    f.write_text("vetting.server=https://o vetting.run=3 vetting.token=t " + real + "\n")
    assert read_coordinates(f).run_id == 3
    if " -- " in real:  # words after "--" belong to init, not to the kernel
        f.write_text(real + " vetting.server=https://o vetting.run=3 vetting.token=t\n")
        with pytest.raises(CmdlineError):
            read_coordinates(f)
    with pytest.raises(CmdlineError, match="cannot read"):
        read_coordinates(tmp_path / "missing")


# -- hold key ----------------------------------------------------------------------------------
def test_hold_key_installed_with_expiry_and_replaced_not_duplicated(tmp_path):
    path = tmp_path / "ssh" / "authorized_keys"
    path.parent.mkdir()
    path.write_text("ssh-rsa AAAAB3other operator@laptop\n")
    line = install_key(path, KEY, NOW, run_id=7)
    assert line.startswith('expiry-time="202611230100",')
    assert line.endswith("vetting-hold-run-7")
    install_key(path, KEY, datetime(2026, 11, 24, 2, 30, tzinfo=UTC), run_id=7)
    lines = path.read_text().splitlines()
    assert lines[0] == "ssh-rsa AAAAB3other operator@laptop"  # other keys kept
    assert len(lines) == 2 and 'expiry-time="202611240230"' in lines[1]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with pytest.raises(HoldKeyError):
        authorized_keys_line("not a key", NOW)
    with pytest.raises(HoldKeyError):
        authorized_keys_line(KEY + "\nssh-rsa AAAA injected", NOW)


# -- sensors -------------------------------------------------------------------------------------
def test_ipmitool_sdr_parser_on_published_output():
    readings = parse_ipmitool_sdr((FIXTURES / "ipmitool-sdr/unversioned/sdr-inspur.txt").read_text())
    by_key = {k: (kind, v, u) for kind, k, v, u in readings}
    assert by_key["ipmi/GPU1_Temp"] == ("temp", 23.0, "C")
    assert by_key["ipmi/P12V"] == ("volt", 12.06, "V")
    assert by_key["ipmi/FAN0_F_Speed"] == ("fan", 5760.0, "RPM")
    assert by_key["ipmi/Total_Power"] == ("power", 296.0, "W")
    assert "ipmi/GPU2_Temp" not in by_key  # no reading
    assert "ipmi/CPU0_Status" not in by_key and "ipmi/CPU_ResourceRate" not in by_key
    assert len(readings) == 10
    # the five-column `sdr elist` layout, captured from ipmitool 1.8.19 against ipmi_sim:
    # status and redundancy sensors carry no number and are left out
    elist = parse_ipmitool_sdr((FIXTURES / "ipmitool-sdr/1.8.19/elist-full-ps2-failed.txt").read_text())
    assert [(k, v, u) for _, k, v, u in elist] == [
        ("ipmi/12V", 12.06, "V"), ("ipmi/5V", 5.04, "V"), ("ipmi/3.3V", 3.32, "V"), ("ipmi/5VSB", 4.5, "V"),
        ("ipmi/PS1 Input Power", 240.0, "W"),
    ]


def _fake_hwmon(root: Path) -> None:
    """A sysfs-shaped tree (this VM has no hwmon): two coretemp chips, a fan board."""
    def chip(n: int, name: str, files: dict[str, str]) -> None:
        d = root / f"hwmon{n}"
        d.mkdir(parents=True)
        (d / "name").write_text(name + "\n")
        for f, v in files.items():
            (d / f).write_text(v + "\n")

    chip(0, "coretemp", {"temp1_input": "45000", "temp1_label": "Package id 0", "temp2_input": "41000", "temp2_crit": "100000"})
    chip(1, "coretemp", {"temp1_input": "47500", "temp1_label": "Package id 1"})
    chip(2, "nct6775", {"fan1_input": "1200", "in0_input": "1104", "power1_average": "95000000", "temp7_input": "garbage"})


def test_hwmon_source_scales_labels_and_skips_garbage(tmp_path):
    _fake_hwmon(tmp_path)
    src = HwmonSource(tmp_path)
    got = {(kind, key): (value, unit) for kind, key, value, unit in src.read()}
    assert got[("temp", "coretemp/Package id 0")] == (45.0, "C")
    assert got[("temp", "coretemp/temp2")] == (41.0, "C")
    assert got[("temp", "coretemp#1/Package id 1")] == (47.5, "C")
    assert got[("fan", "nct6775/fan1")] == (1200.0, "RPM")
    assert got[("volt", "nct6775/in0")] == (pytest.approx(1.104), "V")
    assert got[("power", "nct6775/power1")] == (95.0, "W")
    assert ("temp", "nct6775/temp7") not in got  # unreadable value: no sample, no crash
    # values are re-read each tick from the kept-open file
    (tmp_path / "hwmon0/temp1_input").write_text("52000\n")
    assert ("temp", "coretemp/Package id 0", 52.0, "C") in src.read()
    src.close()


def test_throttle_source_sums_counters_per_package(tmp_path):
    for cpu, pkg, core, package in [(0, 0, 3, 10), (1, 0, 4, 10), (2, 1, 0, 5)]:
        d = tmp_path / f"cpu{cpu}"
        (d / "thermal_throttle").mkdir(parents=True)
        (d / "topology").mkdir()
        (d / "topology/physical_package_id").write_text(f"{pkg}\n")
        (d / "thermal_throttle/core_throttle_count").write_text(f"{core}\n")
        (d / "thermal_throttle/package_throttle_count").write_text(f"{package}\n")
    src = ThrottleSource(tmp_path)
    assert sorted(src.read()) == [
        ("throttle", "core_throttle_count", 7.0, "events"),
        ("throttle", "package_throttle_count", 15.0, "events"),
    ]
    assert not ThrottleSource(tmp_path / "nothing").available


@pytest.mark.anyio
async def test_sidecar_tags_samples_with_the_running_stage_and_idles_between(tmp_path):
    _fake_hwmon(tmp_path)
    got: list[Measurement] = []
    sidecar = SensorSidecar(got.append, sources=[HwmonSource(tmp_path)], interval_s=0.05)
    async with anyio.create_task_group() as tg:
        tg.start_soon(sidecar.run)
        await anyio.sleep(0.2)
        assert got == []  # no stage: idle
        sidecar.stage = "CPUStress"
        await anyio.sleep(0.3)
        sidecar.stage = None
        n = len(got)
        await anyio.sleep(0.15)
        tg.cancel_scope.cancel()
    assert n == len(got) and n >= 5 * 4  # ≥ 4 ticks of 5 channels
    assert {s.stage for s in got} == {"CPUStress"}
    assert {s.kind for s in got} == {"temp", "fan", "volt", "power"}


def test_sidecar_on_this_machine_finds_what_exists():
    sidecar = SensorSidecar(lambda s: None)  # real discovery: this VM has no hwmon/BMC/GPU
    assert isinstance(sidecar.describe(), str)
    sidecar.stage = "X"
    assert sidecar.tick() >= 0 and sidecar.ticks == 1


# -- spool ------------------------------------------------------------------------------------------
def _line(i: int, stage: str = "S") -> LogLine:
    return LogLine(ts=NOW, stage=stage, level="info", message=f"line {i}")


def _sample(i: int, stage: str = "S") -> Measurement:
    return Measurement(ts=NOW, stage=stage, kind="temp", key="cpu", value=float(i), unit="C")


@pytest.mark.anyio
async def test_spool_numbers_orders_and_settles(tmp_path):
    spool = await Spool.open(tmp_path / "s.sqlite")
    await spool.append_logs([_line(i) for i in range(3)])
    await spool.append_samples([_sample(i) for i in range(5)])
    await spool.append_logs([_line(3)])
    rid = await spool.append_result(StageResult(stage="S", verdict=Verdict.passed))
    assert spool.pending == 4
    order = []
    while (entry := await spool.next_pending()) is not None:
        order.append((entry.kind, entry.seq))
        if entry.kind == KIND_LOG:
            batch = msgspec.json.decode(entry.body, type=LogBatch)
            assert batch.seq == entry.seq
        elif entry.kind == KIND_SENSOR:
            assert len(msgspec.json.decode(entry.body, type=SensorBatch).samples) == 5
        else:
            result = msgspec.json.decode(entry.body, type=StageResult)
            assert (result.log_seq, result.sensor_seq) == (2, 1)  # names the batches before it
        await spool.settle(entry.id, state="acked", reply=b'{"ok":1}')
    assert order == [("log", 1), ("sensor", 1), ("log", 2), ("result", None)]
    assert (await spool.wait_settled(rid)).reply == b'{"ok":1}'
    assert spool.pending == 0
    assert await spool.produced() == {"log": 4, "sensor": 5, "artifact": 0, "result": 1}
    await spool.aclose()


@pytest.mark.anyio
async def test_spool_splits_batches_under_the_size_limit(tmp_path):
    spool = await Spool.open(tmp_path / "s.sqlite", max_batch_bytes=4096)
    ids = await spool.append_samples([_sample(i) for i in range(500)])
    assert len(ids) > 5
    total, seqs = 0, []
    while (entry := await spool.next_pending()) is not None:
        assert len(entry.body) <= 4096
        batch = msgspec.json.decode(entry.body, type=SensorBatch)
        total += len(batch.samples)
        seqs.append(batch.seq)
        await spool.settle(entry.id, state="acked")
    assert total == 500 and seqs == list(range(1, len(ids) + 1))
    await spool.aclose()


@pytest.mark.anyio
async def test_spool_survives_a_restart_and_syncs_with_the_server(tmp_path):
    path = tmp_path / "s.sqlite"
    spool = await Spool.open(path)
    for i in range(4):
        await spool.append_logs([_line(i)])
    first = await spool.next_pending()
    await spool.settle(first.id, state="acked")
    await spool.aclose()  # the agent dies with 3 batches unacknowledged

    spool = await Spool.open(path)
    assert spool.pending == 3
    # the server says it stored up to log batch 3 (the acks of 2 and 3 were lost)
    assert await spool.sync_server(log_seq=3, sensor_seq=0) == 2
    entry = await spool.next_pending()
    assert entry.seq == 4
    await spool.append_logs([_line(9)])
    assert await spool.last_seq(KIND_LOG) == 5  # numbering continues
    # a fresh spool (new boot) numbers after what the server already has
    fresh = await Spool.open(tmp_path / "fresh.sqlite")
    await fresh.sync_server(log_seq=17, sensor_seq=4)
    await fresh.append_samples([_sample(0)])
    assert (await fresh.next_pending()).seq == 5
    await fresh.aclose()
    await spool.aclose()


@pytest.mark.anyio
async def test_spool_rejected_entry_raises_for_its_waiter(tmp_path):
    spool = await Spool.open(tmp_path / "s.sqlite")
    rid = await spool.append_result(StageResult(stage="S", verdict=Verdict.failed))

    async def reject() -> None:
        await anyio.sleep(0.05)
        await spool.settle(rid, state="rejected", error="HTTP 409: conflicting result")

    async with anyio.create_task_group() as tg:
        tg.start_soon(reject)
        with pytest.raises(SpoolRejected, match="409"):
            await spool.wait_settled(rid)
    assert spool.pending == 0
    await spool.aclose()


# -- progress ---------------------------------------------------------------------------------------
def test_progress_eta_and_lines_in_a_pipe(monkeypatch):
    import io

    from vetting_agent import progress as pg
    from vetting_core.progress import eta, fmt_duration

    assert fmt_duration(5) == "5s" and fmt_duration(125) == "2m05s" and fmt_duration(7300) == "2h01m"
    assert eta(30.0, 0.25) == pytest.approx(90.0) and eta(30.0, 0.0) is None and eta(1, None) is None
    clock = [100.0]
    monkeypatch.setattr(pg.time, "monotonic", lambda: clock[0])
    out = io.StringIO()
    p = pg.ProgressPrinter(3, out, every_s=5.0)
    p.start_stage(2, "CPUStress")
    clock[0] += 10
    p.update("CPUStress", 0.5, "stress-ng cpu")
    clock[0] += 1
    p.update("CPUStress", 0.6, "")  # < every_s since the last line: not printed
    p.update("Other", 0.9, "")  # not the current stage: ignored
    p.finish_stage("CPUStress", "passed", None, 12.0)
    lines = out.getvalue().splitlines()
    assert lines[1] == "[2/3] CPUStress         50%  elapsed 10s  ETA 10s  stress-ng cpu"
    assert lines[-1] == "[2/3] CPUStress        PASSED   12s"
    assert len(lines) == 3


@pytest.mark.gpu
def test_nvml_source_reads_every_gpu():
    from vetting_agent.sidecar import NvmlSource

    src = NvmlSource.try_open()
    if src is None:
        pytest.skip("needs nvidia-ml-py and an NVIDIA GPU with its driver (NVML)")
    try:
        readings = src.read()
        temps = [(k, v) for kind, k, v, _ in readings if kind == "temp"]
        assert len(temps) == len(src.handles) and all(0 < v < 120 for _, v in temps)
        assert any(kind == "power" and 1 < v < 2000 for kind, _, v, _ in readings)
    finally:
        src.close()


@pytest.mark.anyio
async def test_ipmi_source_reads_a_real_bmc(tmp_path):
    """The sidecar's BMC source against OpenIPMI's ipmi_sim over lanplus on loopback
    (the PSU tests' emulator): rails come out scaled, in volts."""
    from tests.support.ipmisim import ipmi_sim
    from vetting_agent.sidecar import IpmiSource

    with ipmi_sim(tmp_path, ps2_failed=False, redundancy_lost=False) as bmc:
        argv = ["ipmitool", "-I", "lanplus", "-C", str(bmc["cipher"]), "-H", bmc["host"], "-p", str(bmc["port"]),
                "-U", bmc["user"], "-P", bmc["password"], "sdr"]
        source = IpmiSource(argv, interval_s=30.0)
        assert source.due()
        await source.refresh()
        assert not source.due()  # not again before interval_s
        readings = {key: (kind, value, unit) for kind, key, value, unit in source.read()}
    assert source.failures == 0
    assert readings["ipmi/12V"] == ("volt", pytest.approx(12.06), "V")
    assert readings["ipmi/3.3V"][0] == "volt" and 3.0 < readings["ipmi/3.3V"][1] < 3.6
    assert source.read() == []  # each reading is handed out once
