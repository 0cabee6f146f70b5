"""End to end: a server taken by its MAC and BMC address is PXE-booted into the real live
image, vetted with a destructive Storage stage, reported, and switched off.

The "server" is a QEMU VM (TCG) with no OS: a virtio NIC whose option ROM is iPXE and
three virtio disks — ``scratch`` (blank, in the expected spec), ``data`` (in the spec,
carries an ext4 file system) and ``guarded`` (a disk the spec does not list, with a
file system: the machine's "system disk"). Its power is a BMC emulator's: ``ipmi_sim`` or
``sushy-emulator`` (Redfish), whose power actions start and kill QEMU
(:mod:`tests.support.bmc`). The VM sits on a bridge + tap inside a
network namespace whose veth peer is the server's PXE interface; ``vetting serve``
with its dnsmasq supervisor is the whole boot infrastructure.

What one run proves, in order: ``vetting run start`` powers the host on through the
BMC with a one-time PXE boot; dnsmasq answers its MAC; the iPXE script boots the live
image's kernel and initrd from the server; the agent (started by systemd in the
image) says hello and claims the run; InventoryCheck and SpecValidate pass; the
Storage stage's wipe probe finds the ext4 on ``data`` and the run holds with nothing
written; the operator overrides; the stage writes and verifies both allowed disks
(fio, crc32c) and never touches ``guarded`` (not in the spec: gate 3); the report
says so; the boot override is cleared and the machine is powered off.

Needs root, QEMU and the live image: :func:`tests.support.liveimage.ensure_image`
builds it when this checkout's image is not cached yet (``.ci/run`` does that before
the tests). Each test writes its boot timeline to ``timeline.json`` in its temporary
directory, and to ``$VETTING_E2E_TIMELINE`` when set (``bench/pxe_boot.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.bmc import IpmiSim, SushyEmulator, wait_until
from tests.support.liveimage import LiveImage, ensure_image
from tests.support.netns import bridged_tap, veth_namespace
from tests.support.server import ServerProcess, free_port
from tests.support.timeline import Tail, boot_timeline, format_timeline
from tests.support.vm import in_namespace, pxe_vm_argv, require_qemu

# a whole vetting under TCG: minutes, not the suite's default 300 s per test
pytestmark = [pytest.mark.e2e, pytest.mark.vm, pytest.mark.root, pytest.mark.timeout(1200)]

MIB = 1024 * 1024
STAGES = ("InventoryCheck", "SpecValidate", "Storage")
# the two 64 MiB disks are the spec's; the 128 MiB one matches nothing in it
SPEC = """\
description: end-to-end test VM
disks:
  - model: "*"
    size_gb: 0.0671
    count: 2
params:
  Storage:
    runtime_s: 2
    read_size: 16M
    verify_size: 16M
    rand_verify_size: 2M
    smart: false
    fio_timeout_s: 300
"""
VM_LIMIT_S = 600  # the VM is killed after this whatever happens


@pytest.fixture(scope="module")
def live_image() -> LiveImage:
    require_qemu("bios")
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespace, tap device, image build)")
    return ensure_image()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MIB):
            h.update(chunk)
    return h.hexdigest()


def make_disks(d: Path) -> dict[str, Path]:
    disks = {"scratch": (64, None), "data": (64, "vetting-data"), "guarded": (128, "system")}
    out = {}
    for name, (mib, label) in disks.items():
        path = d / f"{name}.img"
        with open(path, "wb") as f:
            f.truncate(mib * MIB)
        if label:
            subprocess.run(["mkfs.ext4", "-q", "-F", "-L", label, str(path)], check=True, capture_output=True)
        out[name] = path
    return out


def disk_args(disks: dict[str, Path]) -> tuple[str, ...]:
    args: list[str] = []
    for i, (name, path) in enumerate(disks.items()):
        args += ["-drive", f"file={path},if=none,id=disk{i},format=raw",
                 "-device", f"virtio-blk-pci,drive=disk{i},serial={name}"]
    return tuple(args)


def serve(tmp_path: Path, subnet: str, host_if: str, image: LiveImage, env: dict[str, str]) -> ServerProcess:
    """``vetting serve`` as deployed (as the PXE tier's, tests/vm): dnsmasq on ``host_if``
    with IPv6 router advertisements on a ULA (iPXE otherwise waits ~13 s for a router),
    the live image from the server itself."""
    subprocess.run(["ip", "addr", "add", f"fd00:231:{subnet.split('.')[2]}::1/64", "dev", host_if], check=True)
    port = free_port()
    settings = {
        "server": {"host": f"{subnet}.1", "public_url": f"http://{subnet}.1:{port}"},
        "pxe": {"enabled": True, "interface": host_if, "dhcp_range": f"{subnet}.100,{subnet}.150,1h",
                "tftp_root": str(tmp_path / "tftp"), "kernel_path": str(image.kernel),
                "initrd_path": str(image.initrd), "cmdline_extra": "console=ttyS0 panic=-1",
                "router_advertisement": True},
        # the agent powers the VM off itself after Completed; the server follows at once
        "boot": {"power_off_delay_s": 0},
        "timeouts": {"boot_s": 420},
    }
    srv = ServerProcess(tmp_path / "srv", port=port, settings=settings, env=env)
    srv.base_url = settings["server"]["public_url"]  # it listens on the test network only
    return srv


def events(srv: ServerProcess, run_id: int) -> list[dict[str, Any]]:
    return srv.api("GET", f"/api/v1/runs/{run_id}/events").json()


def cleaned_up(srv: ServerProcess, run_id: int) -> list[dict[str, Any]] | None:
    """The run's events once the server has said what it did after the verdict (both
    BMC actions done), else None."""
    evs = events(srv, run_id)
    return evs if any(e["message"].startswith("after the verdict (Completed)") for e in evs) else None


def states(evs: list[dict[str, Any]]) -> list[str]:
    return [e["data"]["to"] for e in evs if (e.get("data") or {}).get("to") and e["data"].get("from") != e["data"]["to"]]


def start_vetting(srv: ServerProcess, name: str, mac: str, boot: dict[str, Any], tmp_path: Path, provider: str) -> int:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    opts = [f"--boot-option={k}={v}" for k, v in boot.items()]
    srv.cli("host", "add", name, "--mac", mac, "--boot-provider", provider, *opts, "--spec", str(spec), check=True)
    out = srv.cli("run", "start", name, *(f"--stage={s}" for s in STAGES), check=True).stdout
    return int(re.match(r"run (\d+) on ", out).group(1))


def vet(srv: ServerProcess, run_id: int, disks: dict[str, Path], before: dict[str, str], console: Path) -> dict[str, Any]:
    """From power-on to the report: the hold on the wipe probe, the override, the verdict."""

    def detail(want: str, timeout: float) -> dict[str, Any]:
        """The run once it reaches ``want``; a run that comes to rest elsewhere (Failed
        only counts once it stays: a hold passes through it) fails with the story."""
        deadline, failed_since = time.monotonic() + timeout, None
        while True:
            d = srv.run(run_id)
            state = d["run"]["state"]
            if state == want:
                return d
            failed_since = (failed_since or time.monotonic()) if state == "Failed" else None
            problem = None
            if state in ("Completed", "FailedHolding", "Cancelled", "Released") or (failed_since and time.monotonic() - failed_since > 15):
                problem = f"the run is {state}: {d['run'].get('reason')}"
            elif time.monotonic() > deadline:
                problem = f"timed out after {timeout:.0f}s waiting for {want} (the run is {state})"
            if problem:
                tail = console.read_text(errors="replace")[-4000:] if console.exists() else "(no console output)"
                raise AssertionError(f"{problem}\n--- VM console ---\n{tail}\n--- server ---\n{srv.log_tail(40)}")
            time.sleep(1)

    held = detail("FailedHolding", timeout=480)
    storage = next(s for s in held["stages"] if s["name"] == "Storage")
    assert "wipe probe found data on 1 disk(s)" in (storage.get("reason") or ""), storage
    assert "ext4" in storage["reason"]
    # held: nothing was written to any disk
    assert {n: sha256(p) for n, p in disks.items()} == before

    r = srv.api("POST", f"/api/v1/runs/{run_id}/override", json={"reason": "e2e: the data disk may be wiped", "flags": {"wipe": True}})
    assert r.status_code == 200, r.text
    return detail("Completed", timeout=420)


def check_verdicts(srv: ServerProcess, run_id: int, done: dict[str, Any], disks: dict[str, Path], before: dict[str, str]) -> None:
    verdicts = {s["name"]: s["state"] for s in done["stages"]}
    assert verdicts == {"InventoryCheck": "passed", "SpecValidate": "passed", "Storage": "passed"}, done["stages"]
    report = srv.api("GET", f"/api/v1/runs/{run_id}/report/json").json()
    stages = {s["name"]: s for s in report["stages"]}
    assert report["verdict"] == "passed" and set(stages) == set(STAGES)
    assert {n: s["verdict"] for n, s in stages.items()} == dict.fromkeys(STAGES, "passed")
    summary = stages["Storage"]["summary"]
    assert summary["mode"] == "destructive"
    assert sorted(summary["targets"]) == ["/dev/vda", "/dev/vdb"]
    # gate 3: the disk the spec does not list is left alone (the VM's empty floppy drive too)
    assert ("/dev/vdc", "surprise disk: matches no expected-spec disk") in [(s["device"], s["reason"]) for s in summary["skipped"]]
    assert {s["name"]: s["verdict"] for s in stages["Storage"]["substeps"]} == {"vda": "passed", "vdb": "passed"}
    after = {n: sha256(p) for n, p in disks.items()}
    assert after["guarded"] == before["guarded"], "the agent wrote to a disk the safety gates did not clear"
    # the allowed disks really were written (fio's verified writes), the override included
    assert after["scratch"] != before["scratch"] and after["data"] != before["data"]


def save_timeline(tmp_path: Path, name: str, tail: Tail, evs: list[dict[str, Any]], mac: str, wall: float) -> list:
    steps = boot_timeline(tail.lines, evs, mac=mac)
    doc = {"case": name, "steps": steps, "test_wall_s": round(wall, 1)}
    (tmp_path / "timeline.json").write_text(json.dumps(doc, indent=2))
    # every line the boot wrote, with when it arrived: where the seconds went
    t0 = tail.lines[0][0] if tail.lines else 0.0
    (tmp_path / "boot-timed.log").write_text("".join(f"{t - t0:8.2f} {tag:8} {line}\n" for t, tag, line in tail.lines))
    if os.environ.get("VETTING_E2E_TIMELINE"):
        with open(os.environ["VETTING_E2E_TIMELINE"], "a") as f:
            f.write(json.dumps(doc) + "\n")
    return steps


@contextmanager
def emulated_bmc(kind: str, tmp_path: Path, mac: str, vm: list[str]) -> Iterator[tuple[Any, dict[str, Any], dict[str, str]]]:
    """(the emulator, the host's boot_config, the server's environment) for ``kind``;
    the emulator starts ``vm`` on power on and kills it on power off."""
    power_on_cmd = f"exec {shlex.join(vm)}"
    if kind == "ipmi":
        with IpmiSim(tmp_path / "bmc", power_on_cmd=power_on_cmd) as bmc:
            yield bmc, bmc.config(password_env="BMC_PW"), {"BMC_PW": bmc.password}
    else:
        with SushyEmulator(tmp_path / "bmc", mac=mac, power_on_cmd=power_on_cmd) as bmc:
            pw = tmp_path / "bmc.pw"
            pw.write_text(bmc.password)
            yield bmc, bmc.config(password_file=str(pw)), {}


def boot_override(kind: str, bmc: Any) -> str:
    """The BMC's next-boot override, as ``pxe`` or ``none``."""
    if kind == "ipmi":
        return bmc.boot_device
    # sushy's fake driver keeps the target but reports Continuous whatever it is told
    return {"Pxe": "pxe", "None": "none"}.get(bmc.system()["Boot"]["BootSourceOverrideTarget"], "other")


@pytest.mark.parametrize("kind", ["ipmi", "redfish"])
def test_a_host_is_pxe_booted_through_its_bmc_vetted_and_switched_off(tmp_path, live_image, kind, capsys):
    started = time.monotonic()
    subnet = {"ipmi": "10.231.18", "redfish": "10.231.19"}[kind]
    mac = f"52:54:00:{subnet.split('.')[-1]}:00:01"
    console = tmp_path / "console.log"
    disks = make_disks(tmp_path)
    before = {n: sha256(p) for n, p in disks.items()}
    with veth_namespace(f"{subnet}.1/24") as (ns, host_if, ns_if), bridged_tap(ns, ns_if) as tap:
        vm = in_namespace(ns, pxe_vm_argv(firmware="bios", mac=mac, tap=tap, console=console, workdir=tmp_path,
                                          memory_mb=1536, limit_s=VM_LIMIT_S, extra=disk_args(disks)))
        with emulated_bmc(kind, tmp_path, mac, vm) as (bmc, boot_config, env), \
                serve(tmp_path, subnet, host_if, live_image, env=env) as srv, \
                Tail({"console": console, "dnsmasq": srv.data_dir / "pxe" / "dnsmasq.log"}) as tail:
            run_id = start_vetting(srv, f"e2e-{kind}", mac, boot_config, tmp_path, kind)
            wait_until(lambda: bmc.powered, 60, "the BMC to power the VM on")
            assert boot_override(kind, bmc) == "pxe"
            done = vet(srv, run_id, disks, before, console)
            wait_until(lambda: not bmc.powered, 60, "the VM to be powered off")
            wait_until(lambda: boot_override(kind, bmc) == "none", 30, "the boot override to be cleared")
            evs = wait_until(lambda: cleaned_up(srv, run_id), 30, "the server's clean-up after the verdict")
            check_verdicts(srv, run_id, done, disks, before)
    assert states(evs) == ["Queued", "WaitingBoot", "Booting", "Running", "Failed", "FailedHolding", "Running",
                           "Reporting", "Completed"], states(evs)
    steps = save_timeline(tmp_path, kind, tail, evs, mac, time.monotonic() - started)
    with capsys.disabled():
        print(f"\n[e2e {kind}] {time.monotonic() - started:.0f} s; boot timeline:\n{format_timeline(steps)}")
