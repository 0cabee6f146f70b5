"""Storage: the safety gates on real signatures, read-only and verified fio, badblocks
(exits 0 on bad blocks), nominal judgement. Loop devices need root: marked ``root``."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vetting_core.context import MemorySink, StageContext, execute_stage
from vetting_core.model import Verdict
from vetting_core.specdiff import parse_spec
from vetting_stages.inventory.parsers import LSBLK_COLUMNS, parse_lsblk
from vetting_stages.storage import STORAGE_STAGE, select_targets
from vetting_stages.storage.tools import fio_argv, fio_failure, parse_badblocks, parse_fio_json

from ..helpers import fixture_text

LOOP_SPEC = {"disks": [{"model": "*", "count": 4, "transport": "loop"}]}
FAST = {"runtime_s": 1, "verify_size": "8M", "direct": True, "ioengine": "libaio", "smart": True}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def lsblk_disk(dev: str) -> dict:
    out = subprocess.run(["lsblk", "-J", "-b", "-d", "-o", LSBLK_COLUMNS, dev], capture_output=True, text=True, check=True).stdout
    (disk,) = parse_lsblk(out)
    return disk


def run(cmd: list[str]) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"{cmd[0]} failed here: {res.stderr.strip()[:200]}")


async def storage(tmp_path, devices, *, destructive, spec=LOOP_SPEC, override=None, **params):
    ctx = StageContext(
        stage="Storage", sink=MemorySink(), workdir=tmp_path / "wd", non_destructive=not destructive,
        inventory={"disks": [lsblk_disk(d) for d in devices]}, spec=spec,
        params={**FAST, **params, "devices": list(devices)}, override_flags=override,
    )
    return ctx, await execute_stage(STORAGE_STAGE, ctx)


# -- parsers on captured output --------------------------------------------------------


def test_fio_fixtures():
    ok = parse_fio_json(fixture_text("fio/3.33/loop-seqread.json"))
    assert ok["error"] == 0 and ok["metrics"]["read_mbps"] > 0 and ok["metrics"]["read_clat_p99_us"] > 0
    assert "write_mbps" not in ok["metrics"]
    ver = parse_fio_json(fixture_text("fio/3.33/loop-seqwrite-verify-pass.json"))
    assert ver["metrics"]["write_bytes"] == 32 << 20 and fio_failure("", "", ver) is None
    bad = parse_fio_json(fixture_text("fio/3.33/enospc-loop-verify-fail.json"))
    why = fio_failure("", fixture_text("fio/3.33/enospc-loop-verify-fail.stderr"), bad)
    assert bad["error"] == 28 and "error 28" in why and "No space left on device" in why
    # a real crc32c mismatch: fio says so on stderr and exits 1; the JSON after a warning line
    out = fixture_text("fio/3.33/crc32c-mismatch.json")
    mismatch = parse_fio_json(out)
    why = fio_failure(out, fixture_text("fio/3.33/crc32c-mismatch.stderr"), mismatch)
    assert mismatch["error"] == 84 and any("err=84" in n for n in mismatch["notes"])
    assert why.startswith("fio job seqwrite_verify error 84: crc32c: verify failed at file") and "offset 3145728" in why


def test_fio_garbage_and_read_jobs_are_readonly():
    with pytest.raises(ValueError, match="no JSON"):
        parse_fio_json("fio: failed to open /dev/sdz")
    assert "--readonly" in fio_argv("/dev/sdz", "seqread") and "--readonly" in fio_argv("/dev/sdz", "randread")
    w = fio_argv("/dev/sdz", "seqwrite_verify", runtime_s=10, size="1G")
    assert "--verify=crc32c" in w and "--time_based" not in w and "--readonly" not in w
    with pytest.raises(ValueError, match="unknown fio job"):
        fio_argv("/dev/sdz", "trim")


def test_badblocks_fixtures_exit_zero_yet_bad():
    base = "badblocks/1.47.0/enospc-loop-bad"
    assert fixture_text(f"{base}.rc").strip() == "0"
    bb = parse_badblocks(fixture_text(f"{base}.stdout"), fixture_text(f"{base}.stderr"))
    assert bb["completed"] and bb["bad_blocks"] == 1088
    assert (bb["read_errors"], bb["write_errors"], bb["corruption_errors"]) == (0, 1024, 64)
    assert bb["blocks"][:3] == [1024, 1025, 1026]
    clean = parse_badblocks(fixture_text("badblocks/1.47.0/loop-clean.stdout"), fixture_text("badblocks/1.47.0/loop-clean.stderr"))
    assert clean["completed"] and clean["bad_blocks"] == 0
    cut = parse_badblocks("", "Checking for bad blocks in read-write mode\nTesting with pattern 0xaa: ")
    assert cut["completed"] is False


@pytest.mark.skipif(shutil.which("fio") is None, reason="fio is not installed")
def test_real_fio_on_a_file_readonly(tmp_path):
    f = tmp_path / "data.bin"
    f.write_bytes(os.urandom(4 << 20))
    before = sha(f)
    argv = fio_argv(str(f), "randread", runtime_s=1, direct=False, ioengine="psync")
    res = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    parsed = parse_fio_json(res.stdout)
    assert parsed["error"] == 0 and parsed["metrics"]["read_iops"] > 0
    assert sha(f) == before


# -- device allowlist -------------------------------------------------------------------


def test_allowlist_skips_usb_surprise_and_mounted():
    spec = parse_spec("disks:\n  - model: 'SAMSUNG MZQL27T6*'\n    count: 2\n")
    disks = [
        {"name": "nvme0n1", "path": "/dev/nvme0n1", "model": "SAMSUNG MZQL27T6HBLA-00A07", "transport": "nvme"},
        {"name": "nvme1n1", "path": "/dev/nvme1n1", "model": "SAMSUNG MZQL27T6HBLA-00A07", "transport": "nvme"},
        {"name": "sda", "path": "/dev/sda", "model": "ST4000NM0043", "transport": "sas"},
        {"name": "sdb", "path": "/dev/sdb", "model": "Ultra Fit", "transport": "usb", "removable": True},
        {"name": "zram0", "path": "/dev/zram0", "model": ""},
    ]
    targets, skipped = select_targets(disks, spec, destructive=True, mounted={"/dev/nvme1n1p2"})
    assert [t["name"] for t in targets] == ["nvme0n1"]
    assert {s["device"]: s["reason"] for s in skipped} == {
        "/dev/nvme1n1": "disk or one of its partitions is mounted",
        "/dev/sda": "surprise disk: matches no expected-spec disk",
        "/dev/sdb": "removable/USB disk",
    }
    # read-only runs may read the surprise disk, never the USB stick
    targets, _ = select_targets(disks, None, destructive=False, mounted=set())
    assert [t["name"] for t in targets] == ["nvme0n1", "nvme1n1", "sda"]
    # without spec disks a destructive run has no allowlist at all
    targets, skipped = select_targets(disks, None, destructive=True, mounted=set())
    assert targets == [] and all(s["reason"] in ("no expected-spec disks to allow it", "removable/USB disk") for s in skipped)


@pytest.mark.anyio
async def test_destructive_without_spec_disks_is_refused(tmp_path):
    ctx = StageContext(stage="Storage", sink=MemorySink(), workdir=tmp_path, non_destructive=False,
                       inventory={"disks": [{"name": "sda", "path": "/dev/sda", "model": "X", "transport": "sata"}]}, spec=None,
                       params={"smart": False})
    result = await execute_stage(STORAGE_STAGE, ctx)
    assert result.verdict is Verdict.failed and "device allowlist is empty" in result.reason


# -- wipe probe, real signatures on loop devices ------------------------------------------


def write_md_superblock(path: Path) -> None:
    """An md RAID1 member's v1.2 superblock, as mdadm writes it: ``struct
    mdp_superblock_1`` (the kernel's md_p.h) 4 KiB from the start of the device. This VM
    has no md driver, so ``mdadm --create`` cannot run here; the layout and checksum are
    the kernel's, and blkid reads it as ``linux_raid_member`` like any array member."""
    import struct
    import uuid

    max_dev, size = 2, path.stat().st_size >> 9
    sb = bytearray(256 + 2 * max_dev)
    struct.pack_into("<IIII", sb, 0, 0xA92B4EFC, 1, 0, 0)  # magic, major_version, feature_map, pad
    sb[16:32] = uuid.UUID("0e1d2c3b-4a59-6877-8695-a4b3c2d1e0f0").bytes  # set_uuid
    sb[32:64] = b"node7:0".ljust(32, b"\0")  # set_name
    struct.pack_into("<QiiQii", sb, 64, 1_764_000_000, 1, 0, size - 2056, 0, 2)  # ctime, level 1, layout, size, chunk, raid_disks
    struct.pack_into("<QQQQ", sb, 128, 2048, size - 2048, 8, 0)  # data_offset, data_size, super_offset, recovery_offset
    sb[168:184] = uuid.UUID("11111111-2222-3333-4444-555555555555").bytes  # device_uuid
    struct.pack_into("<QQQ", sb, 192, 1_764_000_000, 1, 2**64 - 1)  # utime, events, resync_offset
    struct.pack_into("<I", sb, 220, max_dev)
    struct.pack_into("<HH", sb, 256, 0, 1)  # dev_roles
    csum = sum(struct.unpack_from(f"<{len(sb) // 4}I", sb))
    struct.pack_into("<I", sb, 216, ((csum & 0xFFFFFFFF) + (csum >> 32)) & 0xFFFFFFFF)
    with path.open("r+b") as fh:
        fh.seek(4096)
        fh.write(sb)


@pytest.mark.root
@pytest.mark.anyio
async def test_wipe_probe_holds_on_real_signatures_and_writes_nothing(tmp_path, loops):
    # sparse images; mkfs.xfs insists on 300 MB
    images = {k: loops.image(f"{k}.img", 320 if k == "xfs" else 40) for k in ("gpt", "lvm", "ext4", "xfs", "vfat", "raid", "blank")}
    write_md_superblock(images["raid"])
    gpt = loops.attach(images["gpt"], partscan=True)
    run(["parted", "-s", gpt, "mklabel", "gpt", "mkpart", "data", "ext4", "1MiB", "100%"])
    subprocess.run(["partx", "-u", gpt], capture_output=True)
    if not Path(f"{gpt}p1").exists():
        pytest.skip("no partition device nodes for loop devices here")
    run(["mkfs.ext4", "-q", f"{gpt}p1"])
    run(["mkfs.ext4", "-q", "-L", "scratch", str(images["ext4"])])
    if shutil.which("mkfs.xfs"):
        run(["mkfs.xfs", "-q", str(images["xfs"])])
    if shutil.which("mkfs.vfat"):
        run(["mkfs.vfat", str(images["vfat"])])
    lvm = loops.attach(images["lvm"])
    run(["pvcreate", "-q", "-y", lvm])
    try:
        devs = {k: loops.attach(images[k]) for k in ("ext4", "xfs", "vfat", "raid", "blank")} | {"gpt": gpt, "lvm": lvm}
        before = {k: sha(p) for k, p in images.items()}
        ctx, result = await storage(tmp_path, devs.values(), destructive=True)
        assert result.verdict is Verdict.hold and result.hold
        found = result.summary["found"]
        kinds = {dev: {(f["kind"], f["type"]) for f in fs} for dev, fs in found.items()}
        assert ("partition_table", "gpt") in kinds[devs["gpt"]]
        assert any(f["device"] == f"{gpt}p1" and f["type"] == "ext4" for f in found[devs["gpt"]])
        assert ("lvm", "LVM2_member") in kinds[devs["lvm"]]
        assert ("filesystem", "ext4") in kinds[devs["ext4"]]
        assert "LABEL=scratch" in next(f["detail"] for f in found[devs["ext4"]])
        if shutil.which("mkfs.xfs"):
            assert ("filesystem", "xfs") in kinds[devs["xfs"]]
        if shutil.which("mkfs.vfat"):
            assert ("filesystem", "vfat") in kinds[devs["vfat"]]
        assert ("raid", "linux_raid_member") in kinds[devs["raid"]]
        assert "node7:0" in next(f["detail"] for f in found[devs["raid"]])
        assert devs["blank"] not in found
        assert "wipe probe found data on" in result.reason
        assert not [m for m in ctx.sink.samples if m.kind == "fio"]  # nothing ran
        assert {k: sha(p) for k, p in images.items()} == before
    finally:
        subprocess.run(["pvremove", "-q", "-y", "-ff", lvm], capture_output=True)


@pytest.mark.root
@pytest.mark.anyio
async def test_override_proceeds_with_verified_writes(tmp_path, loops):
    img = loops.image("ext4.img", 32)
    run(["mkfs.ext4", "-q", str(img)])
    dev = loops.attach(img)
    ctx, result = await storage(tmp_path, [dev], destructive=True, override={"wipe": True})
    assert result.verdict is Verdict.passed, result.reason
    assert result.summary["wipe_probe"][dev][0]["type"] == "ext4"
    keys = {m.key.split("/", 1)[1] for m in ctx.sink.samples if m.kind == "fio"}
    assert {"seqread/read_mbps", "randread/read_iops", "seqwrite_verify/write_mbps", "randwrite_verify/write_iops"} <= keys
    assert (result.substeps[0].summary["fio"]["seqwrite_verify"]["write_bytes"]) == 8 << 20


@pytest.mark.root
@pytest.mark.anyio
async def test_non_destructive_never_writes(tmp_path, loops):
    img = loops.image("data.img", 32)
    run(["mkfs.ext4", "-q", str(img)])  # data on it: a read-only run must not care
    before = sha(img)
    dev = loops.attach(img, readonly=True)  # any write attempt would fail the job
    ctx, result = await storage(tmp_path, [dev], destructive=False, spec=None)
    assert result.verdict is Verdict.passed, result.reason
    assert result.summary["mode"] == "read-only" and "wipe_probe" not in result.summary
    jobs = result.substeps[0].summary["fio"]
    assert set(jobs) == {"seqread", "randread"} and jobs["seqread"]["read_mbps"] > 0
    assert sha(img) == before


@pytest.mark.root
@pytest.mark.anyio
async def test_nominal_throughput_is_judged(tmp_path, loops):
    dev = loops.attach(loops.image("blank.img", 16), readonly=True)
    spec = {"disks": [{"model": "*", "transport": "loop", "read_mbps": 10_000_000, "tolerance_pct": 10}]}
    ctx, result = await storage(tmp_path, [dev], destructive=False, spec=spec)
    assert result.verdict is Verdict.failed
    assert "seqread/read_mbps" in result.reason and "below 9000000.0" in result.reason
    assert result.summary["nominal_rules"][0]["op"] == "gte"


@pytest.mark.root
@pytest.mark.anyio
@pytest.mark.parametrize("ceiling_us", [0.01, 1_000_000])
async def test_random_read_latency_is_judged_against_its_ceiling(tmp_path, loops, ceiling_us):
    # no disk answers a 4 KiB read in 10 ns at p99; every disk does within a second
    dev = loops.attach(loops.image("blank.img", 16), readonly=True)
    spec = {"disks": [{"model": "*", "transport": "loop", "read_p99_us": ceiling_us, "tolerance_pct": 10}]}
    ctx, result = await storage(tmp_path, [dev], destructive=False, spec=spec)
    (rule,) = result.summary["nominal_rules"]
    assert (rule["op"], rule["key"].split("/", 1)[1], rule["unit"]) == ("lte", "randread/read_clat_p99_us", "us")
    p99 = result.substeps[0].summary["fio"]["randread"]["read_clat_p99_us"]
    assert p99 > 0
    if ceiling_us < 1:
        assert result.verdict is Verdict.failed and "randread/read_clat_p99_us" in result.reason
        assert "above 0.0 (nominal 0.01 + tolerance)" in result.reason
    else:
        assert result.verdict is Verdict.passed, result.reason


@pytest.mark.root
@pytest.mark.anyio
async def test_badblocks_bad_blocks_fail_the_disk_although_it_exits_zero(tmp_path, loops):
    small = loops.tmpfs("4m")
    dev = loops.attach(loops.image("d.img", 8, where=small))
    ctx, result = await storage(tmp_path, [dev], destructive=True, badblocks=True, badblocks_patterns=["0xaa"], fio_write=False)
    assert result.verdict is Verdict.failed
    bb = result.substeps[0].summary["badblocks"]
    assert bb["completed"] and bb["bad_blocks"] == 1088 and bb["write_errors"] == 1024
    assert "badblocks found 1088 bad blocks" in result.reason
    assert [m.value for m in ctx.sink.samples if m.kind == "badblocks"] == [1088]


@pytest.mark.root
@pytest.mark.anyio
async def test_fio_write_errors_fail_the_disk(tmp_path, loops):
    small = loops.tmpfs("4m")
    dev = loops.attach(loops.image("d.img", 8, where=small))
    ctx, result = await storage(tmp_path, [dev], destructive=True)
    assert result.verdict is Verdict.failed
    assert "seqwrite_verify: fio job seqwrite_verify error 28" in result.reason


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("gpt-disk", {("partition_table", "gpt")}),
        ("gpt-part1-ext4", {("filesystem", "ext4")}),
        ("lvm-pv", {("lvm", "LVM2_member")}),
        ("ext4-labelled", {("filesystem", "ext4")}),
        ("xfs", {("filesystem", "xfs")}),
        ("blank", set()),
    ],
)
def test_signature_findings_from_captured_blkid_and_wipefs(name, expected):
    from vetting_stages.storage.tools import parse_blkid_export, parse_wipefs_json, signature_findings

    rc = int(fixture_text(f"blkid/2.38.1/{name}.rc"))
    blkid = parse_blkid_export(fixture_text(f"blkid/2.38.1/{name}.export"), rc)
    sigs = parse_wipefs_json(fixture_text(f"wipefs/2.38.1/{name}.json"))
    found = signature_findings("/dev/x", blkid, sigs)
    assert {(f["kind"], f["type"]) for f in found} == expected
    if name == "gpt-disk":
        assert len(sigs) == 3  # primary + backup GPT header and the protective MBR: one finding
    if name == "ext4-labelled":
        assert "LABEL=scratch" in found[0]["detail"]


@pytest.mark.root
def test_a_disk_the_agent_may_not_open_is_skipped_with_the_reason(tmp_path, loops):
    # a sandbox or container denies device access however healthy the disk is: the
    # stage runs here as an unprivileged user against a real (root-only) loop device
    dev = loops.attach(loops.image("blank.img", 16), readonly=True)
    os.chmod(dev, 0o600)
    script = (
        "import anyio, json, sys; from pathlib import Path\n"
        "from tests.stages.storage.test_storage import storage\n"
        "async def main():\n"
        "    ctx, r = await storage(Path(sys.argv[1]), [sys.argv[2]], destructive=False, spec=None, smart=False)\n"
        "    print(json.dumps({'verdict': r.verdict.value, 'reason': r.reason,\n"
        "                      'steps': [(s.state.value, s.reason) for s in r.substeps]}))\n"
        "anyio.run(main)\n"
    )
    work = tmp_path / "nobody"
    work.mkdir()
    os.chmod(work, 0o777)
    res = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", script, str(work), dev],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[3], timeout=120,
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["verdict"] == "skipped" and "could be opened" in out["reason"]
    assert out["steps"][0][0] == "skipped" and f"cannot open {dev} for reading" in out["steps"][0][1]
