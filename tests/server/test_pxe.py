"""The PXE supervisor: real dnsmasq on a veth pair into a network namespace, a real DHCP
client (busybox udhcpc) on the other end. Gate 1 of the seed: only registered MACs get
an answer, and each gets its own per-MAC iPXE script URL."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from vetting_core.config import ConfigError, settings_from_dict
from tests.support.netns import veth_namespace
from vetting_server.pxe.supervisor import render_conf

from .conftest import Env, create_operator_token, make_settings, serve_in_process

pytestmark = pytest.mark.anyio

CLIENT_SCRIPT = '#!/bin/sh\n[ "$1" = bound ] && echo "LEASE ip=$ip boot_file=$boot_file"\nexit 0\n'


def test_pxe_settings_are_checked():
    with pytest.raises(ConfigError, match=r"\$\.pxe\.interface is required when \$\.pxe\.enabled is true"):
        settings_from_dict({"pxe": {"enabled": True, "dhcp_range": "10.0.0.10,10.0.0.20,1h"}})
    with pytest.raises(ConfigError, match=r"\$\.pxe\.dhcp_range must be one line"):
        settings_from_dict({"pxe": {"dhcp_range": "10.0.0.10,10.0.0.20\ndhcp-script=/bin/evil"}})


def test_the_configuration_passes_dnsmasqs_own_check(tmp_path):
    assert shutil.which("dnsmasq"), "dnsmasq is a test dependency (.ci/debian-packages.txt: dnsmasq-base)"
    settings = settings_from_dict({"pxe": {"enabled": True, "interface": "lo", "dhcp_range": "10.9.0.10,10.9.0.20,1h",
                                           "tftp_root": str(tmp_path / "tftp")}})
    conf = tmp_path / "dnsmasq.conf"
    conf.write_text(render_conf(settings, tmp_path))
    for name in ("hosts", "opts"):
        (tmp_path / name).write_text("")
    res = subprocess.run(["dnsmasq", "--test", f"--conf-file={conf}"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and "syntax check OK" in res.stderr, res.stderr
    assert "dhcp-ignore=tag:!known" in conf.read_text()


def dhcp(ns: str, iface: str, mac: str, script: Path, *, ipxe: bool, tries: int = 3) -> str | None:
    """One DHCP exchange from ``mac``; the bound lease's boot file, or None when nobody
    answered. Each try waits 4 s: dnsmasq pings a new address for ~3 s before offering it."""
    subprocess.run(["ip", "-n", ns, "link", "set", iface, "address", mac], check=True, capture_output=True)
    argv = ["ip", "netns", "exec", ns, "busybox", "udhcpc", "-i", iface, "-n", "-q", "-t", str(tries), "-T", "4", "-s", str(script)]
    if ipxe:
        argv += ["-x", "0xaf:01"]  # option 175: what iPXE sends, so it gets the per-MAC script URL
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout
    for line in out.splitlines():
        if line.startswith("LEASE "):
            return line.split("boot_file=", 1)[1]
    return None


async def test_only_registered_macs_get_an_address_and_their_ipxe_script(tmp_path, test_registry):
    # the allowlist is read from the hosts table; one engine is enough here (SQLite)
    assert shutil.which("dnsmasq") and shutil.which("busybox"), "apt-get install dnsmasq-base busybox"
    from vetting_server.app import create_app

    script = tmp_path / "udhcpc.sh"
    script.write_text(CLIENT_SCRIPT)
    script.chmod(0o755)
    # a veth pair: the server's end (10.231.7.1/24) here, the client's in a namespace
    with veth_namespace("10.231.7.1/24") as (ns, server_if, client_if):
        settings = make_settings(f"sqlite:///{tmp_path / 'vetting.db'}", tmp_path, pxe={
            "enabled": True, "interface": server_if, "dhcp_range": "10.231.7.100,10.231.7.150,1h",
            "tftp_root": str(tmp_path / "tftp"),
        })
        app = create_app(settings, registry=test_registry)
        async with serve_in_process(app) as client:
            env = Env(app, client, await create_operator_token(app.state.rt))
            host = await env.create_host("node1", "02:00:00:07:00:01")
            await env.create_host("node2", "02:00:00:07:00:02")
            pxe = app.state.rt.pxe
            with anyio.fail_after(10):
                while pxe.process is None:
                    await anyio.sleep(0.05)

            async def ask(mac: str, ipxe: bool, tries: int = 3) -> str | None:
                return await anyio.to_thread.run_sync(lambda: dhcp(ns, client_if, mac, script, ipxe=ipxe, tries=tries))

            # firmware PXE gets iPXE over TFTP; iPXE gets this MAC's own script URL
            assert await ask("02:00:00:07:00:01", ipxe=False) == "undionly.kpxe"
            assert await ask("02:00:00:07:00:01", ipxe=True) == "http://testserver/ipxe/02:00:00:07:00:01"
            assert await ask("02:00:00:07:00:02", ipxe=True) == "http://testserver/ipxe/02:00:00:07:00:02"
            # a machine nobody registered is not answered at all
            assert await ask("02:00:00:07:00:99", ipxe=True, tries=2) is None
            # deleting a host takes its MAC off the allowlist at once (dnsmasq reloaded,
            # never crashed), and the other host still gets its address from its lease
            reloads = pxe.reloads
            r = await env.op("DELETE", f"/api/v1/hosts/{host['id']}")
            assert r.status_code == 204
            with anyio.fail_after(10):
                while pxe.reloads == reloads or pxe.process is None:
                    await anyio.sleep(0.05)
            assert await ask("02:00:00:07:00:01", ipxe=True, tries=2) is None
            assert await ask("02:00:00:07:00:02", ipxe=True) == "http://testserver/ipxe/02:00:00:07:00:02"
            assert pxe.restarts == 0
        log = (Path(settings.server.data_dir) / "pxe" / "dnsmasq.log").read_text()
        assert "02:00:00:07:00:99 ignored" in log


def probe(ns: str, iface: str, mac: str, arch: int = 0, *, ipxe: bool = False, server: str | None = None) -> list[dict]:
    """What a PXE client's first packet gets back (:mod:`tests.support.dhcpprobe`)."""
    argv = ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.support.dhcpprobe", "--interface", iface,
            "--mac", mac, "--arch", str(arch), *(["--ipxe"] if ipxe else []), *(["--server", server] if server else [])]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout
    return [json.loads(line) for line in out.splitlines()]


async def test_proxy_mode_adds_only_the_boot_answers_beside_the_networks_dhcp_server(tmp_path, test_registry):
    """pxe.mode proxy: dnsmasq answers as a ProxyDHCP server, with what iPXE and the
    firmwares need to boot and no address; the whole VM boot is tests/vm/test_pxe_tiny.py."""
    from vetting_server.app import create_app

    mac = "02:00:00:08:00:01"
    with veth_namespace("10.231.8.1/24", "10.231.8.2/24") as (ns, server_if, client_if):
        subprocess.run(["ip", "addr", "flush", "dev", server_if], check=True)  # no address yet (see below)
        settings = make_settings(f"sqlite:///{tmp_path / 'vetting.db'}", tmp_path, pxe={
            "enabled": True, "mode": "proxy", "interface": server_if, "tftp_root": str(tmp_path / "tftp"),
        })
        app = create_app(settings, registry=test_registry)
        async with serve_in_process(app) as client:
            env = Env(app, client, await create_operator_token(app.state.rt))
            await env.create_host("node1", mac)
            # proxy mode answers for the interface's network: the supervisor waits for an address
            await anyio.sleep(1.5)
            assert app.state.rt.pxe.process is None
            subprocess.run(["ip", "addr", "add", "10.231.8.1/24", "dev", server_if], check=True)

            async def ask(*args, **kw) -> list[dict]:
                return await anyio.to_thread.run_sync(lambda: probe(ns, client_if, *args, **kw))

            with anyio.fail_after(20):  # dnsmasq starts, and restarts to read the new host
                while not await ask(mac, 0, ipxe=True):
                    pass
            # iPXE, BIOS (0) and UEFI (7): its script's URL in the file field, and a next-server
            # (iPXE ignores a ProxyDHCP answer with a file but no next-server); no address, and
            # never iPXE's no-pxedhcp (175.176)
            for arch in (0, 7):
                [offer] = await ask(mac, arch, ipxe=True)
                assert offer["file"] == f"http://testserver/ipxe/{mac}" and offer["siaddr"] == "10.231.8.1", offer
                assert offer["yiaddr"] == "0.0.0.0" and offer["peer"] == "10.231.8.1:67"
                assert bytes.fromhex(offer["options"]["60"]) == b"PXEClient" and "175" not in offer["options"]
            # BIOS firmware: a PXE menu of one item (sub-option 9), iPXE over TFTP
            [offer] = await ask(mac, 0)
            assert offer["file"] == "" and b"vetting: iPXE" in bytes.fromhex(offer["vendor_options"]["9"]), offer
            # UEFI firmware (7, "BC_EFI" to dnsmasq): the boot file comes on port 4011
            [ack] = await ask(mac, 7, server="10.231.8.1")
            assert ack["file"] == "ipxe.efi" and ack["siaddr"] == "10.231.8.1" and ack["peer"] == "10.231.8.1:4011", ack
            # a machine nobody registered: nothing at all
            assert await ask("02:00:00:08:00:99", 0, ipxe=True) == []
        conf = (Path(settings.server.data_dir) / "pxe" / "dnsmasq.conf").read_text()
        assert "dhcp-range=10.231.8.0,proxy,255.255.255.0" in conf and "175,176" not in conf
        log = (Path(settings.server.data_dir) / "pxe" / "dnsmasq.log").read_text()
        assert "02:00:00:08:00:99 proxy-ignored" in log


def test_proxy_mode_settings_are_checked():
    with pytest.raises(ConfigError, match=r"\$\.pxe\.dhcp_range: in proxy mode the network's own DHCP server"):
        settings_from_dict({"pxe": {"enabled": True, "mode": "proxy", "interface": "eth1", "dhcp_range": "10.0.0.10,10.0.0.20"}})
    with pytest.raises(ConfigError, match=r"the BOOTP file field holds 127"):
        settings_from_dict({"server": {"public_url": "http://" + "a" * 100 + ".example"},
                            "pxe": {"enabled": True, "mode": "proxy", "interface": "eth1"}})
    with pytest.raises(ConfigError, match=r"\$\.pxe\.mode"):
        settings_from_dict({"pxe": {"mode": "relay"}})
    assert settings_from_dict({"pxe": {"enabled": True, "mode": "proxy", "interface": "eth1"}}).pxe.mode == "proxy"


def test_the_fast_path_options_pass_dnsmasqs_own_check(tmp_path):
    settings = settings_from_dict({"pxe": {"enabled": True, "interface": "lo", "dhcp_range": "10.9.0.10,10.9.0.20,1h",
                                           "tftp_root": str(tmp_path / "tftp"), "router_advertisement": True}})
    text = render_conf(settings, tmp_path)
    assert "dhcp-option=tag:ipxe,encap:175,176,1b" in text  # iPXE: no ProxyDHCP wait
    assert "enable-ra" in text and "ra-param=lo,60,0" in text  # a router that is nobody's default
    conf = tmp_path / "dnsmasq.conf"
    conf.write_text(text)
    res = subprocess.run(["dnsmasq", "--test", f"--conf-file={conf}"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and "syntax check OK" in res.stderr, res.stderr


def test_ipxe_binaries_are_installed_into_the_tftp_root(tmp_path):
    from vetting_server.pxe.supervisor import install_ipxe

    source, root = tmp_path / "ipxe", tmp_path / "tftp"
    source.mkdir()
    root.mkdir()
    (source / "undionly.kpxe").write_bytes(b"bios")
    (source / "ipxe.efi").write_bytes(b"uefi")
    (root / "ipxe.efi").write_bytes(b"the operator's own build")
    assert install_ipxe(source, root) == []
    assert (root / "undionly.kpxe").read_bytes() == b"bios"
    assert (root / "ipxe.efi").read_bytes() == b"the operator's own build"  # never replaced
    assert install_ipxe(tmp_path / "nowhere", tmp_path / "empty-root-that-exists-not") == ["undionly.kpxe", "ipxe.efi"]
