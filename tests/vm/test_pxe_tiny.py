"""The fast PXE tier: a real ``vetting serve`` with its dnsmasq supervisor is the whole
boot infrastructure for a diskless QEMU VM (TCG) on a bridge + tap inside a network
namespace, BIOS and UEFI. The VM boots Debian's kernel and a tiny busybox initramfs
(:mod:`tests.support.vmboot`) whose ``/init`` prints its kernel command line and says
``hello`` with the token from it — so a passing test proves, end to end: dnsmasq
answers the registered MAC (with iPXE over TFTP for the UEFI firmware, the per-MAC
script URL for iPXE), the script's named initrd boots under both firmwares, the
kernel and initrd come over HTTP from the server, and the command line carries a run
token the server accepts, handed out inside the boot window the server opened. The
BIOS VM is powered through ``ipmi_sim`` (its chassis hook starts QEMU), the UEFI VM
by the test, as an operator would for a ``manual`` host.

Each prints its timeline (power-on → DHCP → script → hello); the whole tier runs in
well under a minute per firmware here (TCG, 2 busy cores).
"""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tests.support.bmc import IpmiSim, wait_until
from tests.support.netns import bridged_tap, veth_namespace
from tests.support.server import ServerProcess, free_port
from tests.support.vm import in_namespace, pxe_vm_argv, require_qemu
from tests.support.vmboot import build_initramfs, cached_kernel

pytestmark = [pytest.mark.vm, pytest.mark.root]


@pytest.fixture(scope="module")
def tiny_image(tmp_path_factory):
    kernel = cached_kernel()
    if kernel is None:
        pytest.skip("no kernel for the VM tests: run 'python -m tests.support.vmboot' (.ci/run does)")
    initrd = build_initramfs(kernel, tmp_path_factory.mktemp("initramfs") / "initrd.img")
    return kernel.vmlinuz, initrd


def serve(tmp_path: Path, subnet: str, host_if: str, image: tuple[Path, Path], env: dict[str, str] | None = None,
          proxy: bool = False, **extra) -> ServerProcess:
    """``vetting serve`` as deployed: dnsmasq on ``host_if``, the image from the server.
    The interface gets a ULA so that dnsmasq can answer iPXE's IPv6 router
    solicitations (``pxe.router_advertisement``): without it iPXE waits ~13 s.
    ``proxy``: ``pxe.mode: proxy`` beside the network's own DHCP server, as an operator
    would set it up on a network that is not theirs — no router advertisements."""
    port = free_port()
    if proxy:
        pxe = {"mode": "proxy"}
    else:
        subprocess.run(["ip", "addr", "add", f"fd00:231:{subnet.split('.')[2]}::1/64", "dev", host_if], check=True)
        pxe = {"dhcp_range": f"{subnet}.100,{subnet}.150,1h", "router_advertisement": True}
    settings = {
        "server": {"host": f"{subnet}.1", "public_url": f"http://{subnet}.1:{port}"},
        "pxe": {"enabled": True, "interface": host_if, "tftp_root": str(tmp_path / "tftp"), "kernel_path": str(image[0]),
                "initrd_path": str(image[1]), "cmdline_extra": "console=ttyS0 panic=-1", **pxe},
        **extra,
    }
    srv = ServerProcess(tmp_path / "srv", port=port, settings=settings, env=env)
    srv.base_url = settings["server"]["public_url"]  # it listens on the test network only
    return srv


def read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def events(srv: ServerProcess, run_id: int) -> list[dict]:
    return srv.api("GET", f"/api/v1/runs/{run_id}/events").json()


def check_boot(srv: ServerProcess, run_id: int, console: Path, mac: str, subnet: str,
               powered_on: datetime | None = None, dhcp_log: Path | None = None) -> dict:
    """Wait for the VM's hello; check every link of the chain; return the timeline.
    ``dhcp_log``: the log of the DHCP server that gave the VM its address (default: the
    server's own dnsmasq)."""
    dnsmasq_log = srv.data_dir / "pxe" / "dnsmasq.log"
    dhcp_log = dhcp_log or dnsmasq_log
    try:
        wait_until(lambda: "vetting-initramfs: hello" in read(console), 150, "the VM to say hello", interval=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- console:\n{read(console)[-3000:]}\n--- dnsmasq:\n{read(dnsmasq_log)[-3000:]}"
                             f"\n--- server:\n{read(srv.log_path)[-3000:]}") from None
    text = read(console)
    assert "vetting-initramfs: hello accepted" in text, text[-3000:]
    cmdline = re.search(r"vetting-initramfs: cmdline: (.*)", text).group(1).split()
    assert {"initrd=initrd.img", "console=ttyS0", "panic=-1", f"vetting.run={run_id}", f"vetting.server={srv.settings['server']['public_url']}"} <= set(cmdline)
    assert any(w.startswith("vetting.token=vr_") for w in cmdline)
    assert f"vetting-initramfs: nic: eth0 {mac}" in text
    lease = re.search(rf"vetting-initramfs: lease ({re.escape(subnet)}\.\d+) on eth0", text).group(1)
    evs = events(srv, run_id)
    served = [e for e in evs if e["kind"] == "boot" and "served to" in e["message"]]
    assert len(served) == 1 and served[0]["data"] == {"mac": mac, "peer": served[0]["data"]["peer"]}
    assert served[0]["data"]["peer"].startswith(f"{subnet}.")
    assert any("agent vetting-initramfs said hello (pxe mode, busybox-initramfs)" in e["message"] for e in evs)
    dhcp = read(dhcp_log)
    assert re.search(rf"DHCPACK\(\S+\) {re.escape(lease)} {mac}", dhcp), dhcp[-2000:]
    return {"timeline": timeline(evs, dhcp, mac, powered_on), "dnsmasq": read(dnsmasq_log)}


def timeline(evs: list[dict], dnsmasq: str, mac: str, powered_on: datetime | None) -> str:
    """Seconds from the power-on (the provider's, or ``powered_on``) to each step
    (events: milliseconds; the DHCP server's dnsmasq log: whole seconds)."""

    def at(pred) -> datetime:
        return datetime.fromisoformat(next(e["ts"] for e in evs if pred(e)))

    power = powered_on or at(lambda e: e["message"].startswith("boot requested"))
    script = at(lambda e: "served to" in e["message"])
    hello = at(lambda e: "said hello" in e["message"])
    first_dhcp = re.search(rf"^(\w+ +\d+ [\d:]+) \S+ \d+ DHCPDISCOVER\(\S+\) {mac}", dnsmasq, re.M).group(1)
    dhcp = datetime.strptime(f"{power.year} {first_dhcp}", "%Y %b %d %H:%M:%S").astimezone(timezone.utc)  # local time
    return (f"first DHCP {(dhcp - power).total_seconds():.0f} s, iPXE script {(script - power).total_seconds():.1f} s, "
            f"hello {(hello - power).total_seconds():.1f} s after the power-on")


def test_bios_vm_pxe_boots_the_tiny_image_powered_through_ipmi(tmp_path, tiny_image, capsys):
    require_qemu("bios")
    subnet, mac = "10.231.16", "52:54:00:16:00:01"
    console = tmp_path / "console.log"
    with veth_namespace(f"{subnet}.1/24") as (ns, host_if, ns_if), bridged_tap(ns, ns_if) as tap:
        vm = in_namespace(ns, pxe_vm_argv(firmware="bios", mac=mac, tap=tap, console=console, workdir=tmp_path))
        with IpmiSim(tmp_path / "bmc", power_on_cmd=f"exec {shlex.join(vm)}") as bmc, \
                serve(tmp_path, subnet, host_if, tiny_image, env={"BMC_PW": bmc.password},
                      boot={"power_off_delay_s": 0}) as srv:
            opts = [f"--boot-option={k}={v}" for k, v in bmc.config(password_env="BMC_PW").items()]
            srv.cli("host", "add", "vm-bios", "--mac", mac, "--boot-provider", "ipmi", *opts, check=True)
            host = srv.api("GET", "/api/v1/hosts").json()["items"][0]
            run_id, _ = srv.start_run(host["id"], stages=["InventoryCheck"])
            run = srv.wait_state(run_id, "Booting", timeout=30)["run"]
            assert "next boot from PXE (legacy BIOS); powered on" in run["boot_message"]
            assert bmc.powered and bmc.boot_device == "pxe"
            result = check_boot(srv, run_id, console, mac, subnet)
            # BIOS: the NIC's ROM is iPXE, so the first DHCP answer already carries the script URL
            assert "/ipxe/" in result["dnsmasq"] and not re.search(r"sent \S+ to", result["dnsmasq"])  # no TFTP
            # the guest powered itself off; cancelling the run clears the override through the BMC
            wait_until(lambda: not bmc.powered, 30, "the VM to power off")
            srv.api("POST", f"/api/v1/runs/{run_id}/cancel", json={"reason": "tiny image: nothing to vet"})
            wait_until(lambda: any(e["message"].startswith("after the verdict (Cancelled)") for e in events(srv, run_id)),
                       15, "the clean-up after the verdict")
            assert bmc.boot_device == "none"
    with capsys.disabled():
        print(f"\n[pxe-tiny bios] {result['timeline']}")


def boot_by_hand(srv: ServerProcess, ns: str, tap: str, firmware: str, mac: str, subnet: str, workdir: Path,
                 dhcp_log: Path | None = None) -> dict:
    """Register a ``manual`` host (the test is the operator), start its run, power the VM
    on once the boot window is open, and :func:`check_boot` it; the guest powers off."""
    console = workdir / "console.log"
    srv.cli("host", "add", f"vm-{firmware}", "--mac", mac, check=True)
    host = srv.api("GET", "/api/v1/hosts").json()["items"][0]
    run_id, _ = srv.start_run(host["id"], stages=["InventoryCheck"])
    srv.wait_state(run_id, "Booting", timeout=30)  # the boot window is open
    powered_on = datetime.now(timezone.utc)
    vm = subprocess.Popen(in_namespace(ns, pxe_vm_argv(firmware=firmware, mac=mac, tap=tap, console=console,
                                                        workdir=workdir)),
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        result = check_boot(srv, run_id, console, mac, subnet, powered_on, dhcp_log)
        assert vm.wait(60) == 0  # the guest powered off
    finally:
        if vm.poll() is None:
            vm.kill()
            vm.wait()
    return result


def test_uefi_vm_pxe_boots_the_tiny_image_through_ipxe_efi_over_tftp(tmp_path, tiny_image, capsys):
    require_qemu("uefi")
    subnet, mac = "10.231.17", "52:54:00:17:00:01"
    with veth_namespace(f"{subnet}.1/24") as (ns, host_if, ns_if), bridged_tap(ns, ns_if) as tap, \
            serve(tmp_path, subnet, host_if, tiny_image) as srv:
        result = boot_by_hand(srv, ns, tap, "uefi", mac, subnet, tmp_path)
    # the UEFI firmware's own PXE client got iPXE over TFTP from the supervisor's copy
    assert re.search(r"sent \S+/ipxe\.efi to " + re.escape(subnet), result["dnsmasq"]), result["dnsmasq"][-2000:]
    with capsys.disabled():
        print(f"\n[pxe-tiny uefi] {result['timeline']}")


@contextmanager
def site_dhcp(ns: str, subnet: str, workdir: Path) -> Iterator[Path]:
    """The network's own DHCP server, which the vetting server cannot change: a second
    dnsmasq, on the namespace's bridge (``<subnet>.2``), that hands out addresses and
    nothing else — no boot file, no PXE, no iPXE options. Yields its log. It is the
    network's IPv6 router too (advertisements of a ULA prefix), as many are: without
    one iPXE waits ~13 s before it fetches its script (measured here: docs/pxe.md)."""
    subprocess.run(["ip", "-n", ns, "addr", "add", f"{subnet}.2/24", "dev", "br0"], check=True)
    subprocess.run(["ip", "-n", ns, "addr", "add", f"fd00:231:{subnet.split('.')[2]}::2/64", "dev", "br0"], check=True)
    conf, log = workdir / "site-dhcp.conf", workdir / "site-dhcp.log"
    conf.write_text(f"port=0\ninterface=br0\nbind-interfaces\ndhcp-range={subnet}.100,{subnet}.150,1h\n"
                    "enable-ra\ndhcp-range=::,constructor:br0,ra-only\nra-param=br0,60,0\n"
                    f"dhcp-leasefile={workdir / 'site-dhcp.leases'}\nlog-dhcp\n")
    proc = subprocess.Popen(in_namespace(ns, ["dnsmasq", "--keep-in-foreground", f"--conf-file={conf}",
                                              f"--log-facility={log}"]),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: "DHCP, IP range" in read(log), 10, "the site's DHCP server to start")
        yield log
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_vm_pxe_boots_beside_the_networks_own_dhcp_server_in_proxy_mode(tmp_path, tiny_image, capsys, firmware):
    """``pxe.mode: proxy``: the site's DHCP server gives the VM its address, the vetting
    server's dnsmasq only the boot answers (ProxyDHCP), and the VM boots all the same."""
    require_qemu(firmware)
    subnet = {"bios": "10.231.18", "uefi": "10.231.19"}[firmware]
    mac = f"52:54:00:{subnet.split('.')[2]}:00:01"
    with veth_namespace(f"{subnet}.1/24") as (ns, host_if, ns_if), bridged_tap(ns, ns_if) as tap, \
            site_dhcp(ns, subnet, tmp_path) as site_log, serve(tmp_path, subnet, host_if, tiny_image, proxy=True) as srv:
        result = boot_by_hand(srv, ns, tap, firmware, mac, subnet, tmp_path, dhcp_log=site_log)
    ours = result["dnsmasq"]
    assert re.search(rf"PXE\(\S+\) {mac} proxy", ours), ours[-2000:]  # it answered as a ProxyDHCP server
    assert not re.search(r"DHCP(OFFER|ACK)", ours), ours[-2000:]  # and gave no address: the site did
    if firmware == "uefi":  # the firmware's PXE client: a menu of one item, iPXE over TFTP
        assert re.search(r"sent \S+/ipxe\.efi to " + re.escape(subnet), ours), ours[-2000:]
    with capsys.disabled():
        print(f"\n[pxe-tiny proxy {firmware}] {result['timeline']}")
