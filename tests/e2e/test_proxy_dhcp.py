"""The proxy-DHCP recipe of docs/pxe.md, booted for real: on a network whose addresses
come from another DHCP server, dnsmasq in proxy mode (configured with exactly the
documented lines, the example's addresses replaced by the test network's) brings a
diskless VM to the vetting server's iPXE script, BIOS and UEFI.

The "existing" DHCP server is a plain dnsmasq inside the VM's network namespace (on
the bridge, addresses only, no boot options); the proxy runs beside the vetting server
on the veth peer, as it would on the server's provisioning interface; the server has
``pxe.enabled`` off. The VM boots the tiny busybox initramfs of the PXE tier
(:mod:`tests.support.vmboot`), whose ``/init`` says hello with the token from its
command line: the server accepting it proves the whole chain.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.bmc import wait_until
from tests.support.netns import bridged_tap, veth_namespace
from tests.support.server import ServerProcess, free_port
from tests.support.vm import in_namespace, pxe_vm_argv, require_qemu
from tests.support.vmboot import build_initramfs, cached_kernel

pytestmark = [pytest.mark.vm, pytest.mark.root]

DOC = Path(__file__).resolve().parents[2] / "docs" / "pxe.md"
IPXE = Path("/usr/lib/ipxe")


def documented_recipe() -> str:
    text = DOC.read_text()
    block = re.search(r"<!-- proxy-dhcp recipe.*?-->\s*```\n(.*?)```\s*<!-- end of recipe -->", text, re.S)
    assert block, "docs/pxe.md lost its proxy-DHCP recipe"
    return block.group(1)


def recipe_for(subnet: str, interface: str, server: str, tftp: Path, leases: Path) -> str:
    """The documented lines with the example's addresses swapped for the test's."""
    conf = documented_recipe()
    for example, real in (("http://10.20.0.5:8080", server), ("10.20.0.0", f"{subnet}.0"),
                          ("interface=eth1", f"interface={interface}"), ("/srv/vetting/tftp", str(tftp))):
        assert example in conf, f"the recipe no longer mentions {example}"
        conf = conf.replace(example, real)
    return conf + f"dhcp-leasefile={leases}\n"


@pytest.fixture(scope="module")
def tiny_image(tmp_path_factory):
    kernel = cached_kernel()
    if kernel is None:
        pytest.skip("no kernel for the VM tests: run 'python -m tests.support.vmboot' (.ci/run does)")
    return kernel.vmlinuz, build_initramfs(kernel, tmp_path_factory.mktemp("initramfs") / "initrd.img")


def dnsmasq(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*argv, "--keep-in-foreground", "--log-facility=-", "--pid-file="], stdin=subprocess.DEVNULL,
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_the_documented_proxy_dhcp_recipe_boots_a_vm_beside_another_dhcp_server(tmp_path, tiny_image, firmware, capsys):
    require_qemu(firmware)
    assert shutil.which("dnsmasq"), "dnsmasq is a test dependency (.ci/debian-packages.txt: dnsmasq-base)"
    subnet = "10.231.20" if firmware == "bios" else "10.231.21"
    mac = f"52:54:00:{subnet.split('.')[-1]}:00:01"
    tftp = tmp_path / "tftp"
    tftp.mkdir()
    shutil.copyfile(IPXE / "undionly.kpxe", tftp / "undionly.0")
    shutil.copyfile(IPXE / "ipxe.efi", tftp / "ipxe.efi")
    console = tmp_path / "console.log"
    with veth_namespace(f"{subnet}.1/24") as (ns, host_if, ns_if), bridged_tap(ns, ns_if) as tap:
        # the network's own DHCP server: addresses only, from the far side of the bridge
        subprocess.run(["ip", "-n", ns, "addr", "add", f"{subnet}.2/24", "dev", "br0"], check=True)
        existing = dnsmasq(["ip", "netns", "exec", ns, "dnsmasq", "--conf-file=/dev/null", "--port=0",
                            "--interface=br0", "--bind-interfaces", f"--dhcp-range={subnet}.100,{subnet}.150,1h",
                            f"--dhcp-leasefile={tmp_path / 'existing.leases'}", "--log-dhcp"], tmp_path / "existing.log")
        port = free_port()
        url = f"http://{subnet}.1:{port}"
        kernel, initrd = tiny_image
        srv = ServerProcess(tmp_path / "srv", port=port, settings={
            "server": {"host": "0.0.0.0", "public_url": url},
            "pxe": {"enabled": False, "kernel_path": str(kernel), "initrd_path": str(initrd),
                    "cmdline_extra": "console=ttyS0 panic=-1"}})
        conf = tmp_path / "vetting-proxy.conf"
        conf.write_text(recipe_for(subnet, host_if, url, tftp, tmp_path / "proxy.leases"))
        # as root: dnsmasq's default user (nobody) cannot read the test's private TFTP folder
        proxy = dnsmasq(["dnsmasq", f"--conf-file={conf}", "--user=root"], tmp_path / "proxy.log")
        vm = None
        try:
            with srv:
                srv.cli("host", "add", f"vm-{firmware}", "--mac", mac, check=True)  # manual: the test powers it on
                host = srv.api("GET", "/api/v1/hosts").json()["items"][0]
                run_id, _ = srv.start_run(host["id"], stages=["InventoryCheck"])
                srv.wait_state(run_id, "Booting", timeout=30)
                started = time.monotonic()
                vm = subprocess.Popen(in_namespace(ns, pxe_vm_argv(firmware=firmware, mac=mac, tap=tap, console=console,
                                                                    workdir=tmp_path)),
                                      stdin=subprocess.DEVNULL, stdout=open(tmp_path / "qemu.log", "ab"), stderr=subprocess.STDOUT,
                                      start_new_session=True)
                wait_until(lambda: console.exists() and "vetting-initramfs: hello" in console.read_text(errors="replace"), 150,
                           "the VM to say hello", interval=0.5)
                hello_s = time.monotonic() - started
                text = console.read_text(errors="replace")
                assert "vetting-initramfs: hello accepted" in text, text[-3000:]
                events = srv.api("GET", f"/api/v1/runs/{run_id}/events").json()
                assert any(e["message"] == f"iPXE script served to {mac}" for e in events), events
        finally:
            if vm is not None and vm.poll() is None:
                os.killpg(vm.pid, signal.SIGKILL)  # QEMU is a child of timeout(1): the whole group
                vm.wait()
            stop(proxy)
            stop(existing)
        existing_log = (tmp_path / "existing.log").read_text(errors="replace")
        proxy_log = (tmp_path / "proxy.log").read_text(errors="replace")
        # the address came from the existing server; the proxy gave boot answers only
        lease = re.search(r"vetting-initramfs: lease (\S+) on eth0", text).group(1)
        assert re.search(rf"DHCPACK\(br0\) {re.escape(lease)} {mac}", existing_log), existing_log[-2000:]
        assert "DHCPACK" not in proxy_log and "proxy" in proxy_log, proxy_log[-2000:]
        assert f"/ipxe/{mac}" in proxy_log
        if firmware == "uefi":  # the firmware's PXE client got iPXE from the proxy's TFTP
            assert re.search(r"sent \S+/ipxe\.efi to ", proxy_log), proxy_log[-2000:]
    with capsys.disabled():
        print(f"\n[proxy-dhcp {firmware}] power-on -> hello {hello_s:.1f} s")
