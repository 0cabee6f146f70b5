"""The PXE supervisor: dnsmasq as DHCP + TFTP for the vetting network, answering
registered MACs only (seed 001, safety gate 1: the MAC allowlist).

With ``pxe.enabled`` the server writes a dnsmasq configuration under
``data_dir/pxe/`` and runs ``dnsmasq --keep-in-foreground`` as its child, restarting
it (with backoff) if it dies. Two files carry the hosts and are rewritten whenever a
host is created, changed or deleted, after which dnsmasq is restarted to read them
(leases survive in its lease file). Not SIGHUP: dnsmasq 2.90 (Debian 12) aborts when
it re-reads a ``dhcp-hostsfile`` while one of its hosts holds a lease (seen here).

- ``hosts`` (``dhcp-hostsfile``): one ``<mac>,set:known,set:h<id>`` line per host;
  ``dhcp-ignore=tag:!known`` makes dnsmasq ignore every other MAC — an unregistered
  machine on the vetting VLAN is never offered an address, let alone a boot image;
- ``opts`` (``dhcp-optsfile``): per host, the boot file an iPXE client (DHCP option
  175) is given: ``<public_url>/ipxe/<mac>``, the per-MAC script that carries the
  run's token. Firmware PXE clients first get iPXE itself over TFTP
  (``undionly.kpxe`` for BIOS, ``ipxe.efi`` for x86-64 UEFI): the supervisor copies
  both from ``pxe.ipxe_dir`` (Debian package ``ipxe``: ``/usr/lib/ipxe``) into
  ``pxe.tftp_root`` when they are not there yet. The live image's kernel and initrd
  are served over HTTP by the server itself (:mod:`.bootfiles`), so ``vetting serve``
  with ``pxe.enabled`` is the whole boot infrastructure.

dnsmasq runs as ``pxe.user`` (default ``root``); it drops to that user before it
serves TFTP, so with dnsmasq's own default (``nobody``) and a private data directory
it cannot start. Set ``pxe.user: nobody`` where that user can read ``tftp_root``.

``pxe.mode`` ``dhcp`` (default): ``pxe.dhcp_range`` is a dnsmasq ``dhcp-range`` with
addresses (the vetting VLAN is the server's own). ``proxy``: the network already has a
DHCP server, which keeps handing out the addresses; dnsmasq answers as a ProxyDHCP
server (``dhcp-range=<network>,proxy``, the network of ``pxe.interface``'s IPv4
address) with the boot answers only, still for registered MACs only:

- firmware PXE clients get a one-item PXE menu (``pxe-service``) whose boot file is
  iPXE over TFTP — ``undionly.kpxe`` (x86PC), ``ipxe.efi`` (BC_EFI = client
  architecture 7, x86-64_EFI = 9);
- iPXE gets its script URL in the BOOTP ``file`` field of the proxy offer
  (``dhcp-boot``, per host: ``opts`` is then a conf-file of ``dhcp-boot`` lines, which a
  ``dhcp-optsfile`` cannot hold) *with the next-server address set*: iPXE takes a
  ProxyDHCP answer only when it has a PXE menu or a next-server and a file name
  (``dhcp_has_pxeopts`` in iPXE's dhcp.c), and dnsmasq 2.90 leaves next-server empty in
  its proxy answers to BIOS clients unless ``dhcp-boot`` names one — without it iPXE
  asked again on port 4011, ignored each answer and ended in "Nothing to boot";
- never iPXE's "no-pxedhcp" (175.176): iPXE must wait for the ProxyDHCP offer.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import shutil
import socket
import struct
from pathlib import Path
from subprocess import DEVNULL
from typing import Any

import anyio
import anyio.abc
import structlog

from vetting_core.tools import ToolNotFound, which

from ..runtime import Runtime

log = structlog.get_logger()


def render_conf(settings: Any, pxe_dir: Path, address: ipaddress.IPv4Interface | None = None) -> str:
    """The dnsmasq configuration for ``settings.pxe`` (validated at start-up); proxy mode
    needs ``address``, the interface's (:func:`interface_ipv4`)."""
    p = settings.pxe
    tftp_root = Path(p.tftp_root).resolve()
    lines = [
        "# written by vetting (vetting_server/pxe/supervisor.py); changes are overwritten",
        "port=0",  # no DNS: DHCP and TFTP only
        f"interface={p.interface}",
        "bind-interfaces",
        f"dhcp-hostsfile={pxe_dir / 'hosts'}",
        "dhcp-ignore=tag:!known",  # gate 1: registered MACs only
        "dhcp-match=set:ipxe,175",
    ]
    if p.mode == "proxy":
        if address is None:
            raise ValueError("proxy mode needs the interface's IPv4 address")
        lines += [
            f"dhcp-range={address.network.network_address},proxy,{address.netmask}",
            f"conf-file={pxe_dir / 'opts'}",  # per host: dhcp-boot, which a dhcp-optsfile cannot hold
            # firmware PXE: a menu of one item (booted at once), iPXE over TFTP from here
            'pxe-service=tag:!ipxe,x86PC,"vetting: iPXE",undionly.kpxe',
            'pxe-service=tag:!ipxe,BC_EFI,"vetting: iPXE",ipxe.efi',
            'pxe-service=tag:!ipxe,x86-64_EFI,"vetting: iPXE",ipxe.efi',
        ]
    else:
        lines += [
            f"dhcp-range={p.dhcp_range}",
            f"dhcp-optsfile={pxe_dir / 'opts'}",
            # iPXE's "no-pxedhcp" (option 175.176): there is no ProxyDHCP server here, so
            # iPXE need not wait for one before it takes the offer (~10 s per boot)
            "dhcp-option=tag:ipxe,encap:175,176,1b",
            "dhcp-vendorclass=set:efi64,PXEClient:Arch:00007",
            "dhcp-vendorclass=set:efi64,PXEClient:Arch:00009",
            "dhcp-boot=tag:!ipxe,tag:efi64,ipxe.efi",
            "dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe",
        ]
    lines += [
        "enable-tftp",
        f"tftp-root={tftp_root}",
        "tftp-secure",
        f"dhcp-leasefile={pxe_dir / 'leases'}",
        "log-dhcp",
    ]
    if p.router_advertisement:
        # iPXE waits ~13 s for an IPv6 router before it fetches its script when none
        # answers (seen here); an advertisement of the interface's own prefix, from a
        # router that is nobody's default (lifetime 0), ends that wait
        lines += ["enable-ra", f"dhcp-range=::,constructor:{p.interface},ra-only", f"ra-param={p.interface},60,0"]
    return "\n".join(lines) + "\n"


def render_hosts(hosts: list[dict[str, Any]], public_url: str,
                 next_server: ipaddress.IPv4Address | None = None) -> tuple[str, str]:
    """(``hosts`` file, ``opts`` file) for the registered hosts; with ``next_server``
    (proxy mode) ``opts`` holds ``dhcp-boot`` lines that name it."""
    host_lines, opt_lines = [], []
    for h in hosts:
        tag = f"h{int(h['id'])}"
        url = f"{public_url}/ipxe/{h['mac']}"
        host_lines.append(f"{h['mac']},set:known,set:{tag}")
        if next_server is None:
            opt_lines.append(f"tag:{tag},tag:ipxe,option:bootfile-name,{url}")
        else:
            opt_lines.append(f"dhcp-boot=tag:{tag},tag:ipxe,{url},,{next_server}")
    return "\n".join(host_lines) + "\n", "\n".join(opt_lines) + "\n"


_SIOCGIFADDR, _SIOCGIFNETMASK = 0x8915, 0x891B


def interface_ipv4(name: str) -> ipaddress.IPv4Interface | None:
    """The (primary) IPv4 address and prefix of interface ``name``; None when it has none."""
    request = struct.pack("256s", name.encode()[:15])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            addr = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, request)[20:24]
            mask = fcntl.ioctl(s.fileno(), _SIOCGIFNETMASK, request)[20:24]
        except OSError:  # no such interface, or no IPv4 address on it
            return None
    return ipaddress.IPv4Interface(f"{socket.inet_ntoa(addr)}/{socket.inet_ntoa(mask)}")


IPXE_BINARIES = ("undionly.kpxe", "ipxe.efi")


def install_ipxe(source: Path, tftp_root: Path) -> list[str]:
    """Copy the iPXE binaries missing from ``tftp_root`` out of ``source``; return the
    names still missing. A copy an operator put there is never replaced."""
    missing = []
    for name in IPXE_BINARIES:
        dest = tftp_root / name
        if dest.is_file():
            continue
        try:
            tmp = dest.with_name(f".{name}.tmp")
            shutil.copyfile(source / name, tmp)
            os.replace(tmp, dest)
            log.info("pxe.ipxe_installed", file=str(dest), source=str(source / name))
        except OSError:
            missing.append(name)
    return missing


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class PxeSupervisor:
    RESTART_MIN_S = 1.0
    RESTART_MAX_S = 60.0
    SETTLE_S = 0.2  # host changes within this window cause one restart

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.dir = rt.data_dir / "pxe"
        self.process: anyio.abc.Process | None = None
        self.restarts = 0  # after a crash
        self.reloads = 0  # after host changes
        self.address: ipaddress.IPv4Interface | None = None  # the interface's, in proxy mode
        self._changed = anyio.Event()

    @property
    def enabled(self) -> bool:
        return bool(self.rt.settings.pxe.enabled)

    async def refresh(self) -> None:
        """Rewrite the host files from the database; dnsmasq is restarted to read them."""
        if not self.enabled or (self.rt.settings.pxe.mode == "proxy" and self.address is None):
            return  # proxy mode: run() writes them once it knows the interface's address
        rows = await self.rt.db.fetch("SELECT id, mac FROM hosts ORDER BY id")
        next_server = self.address.ip if self.address else None
        hosts, opts = render_hosts([dict(r) for r in rows], self.rt.public_url, next_server)
        await anyio.to_thread.run_sync(lambda: (_write(self.dir / "hosts", hosts), _write(self.dir / "opts", opts)))
        self._changed.set()
        log.info("pxe.hosts_written", hosts=len(rows))

    async def run(self) -> None:
        """Write the configuration, then keep dnsmasq running until cancelled."""
        if not self.enabled:
            return
        try:
            binary = which(self.rt.settings.pxe.dnsmasq)
        except ToolNotFound as exc:
            log.error("pxe.unavailable", error=str(exc), hint="apt-get install dnsmasq-base")
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        tftp_root = Path(self.rt.settings.pxe.tftp_root).resolve()
        tftp_root.mkdir(parents=True, exist_ok=True)  # dnsmasq refuses to start without it
        missing = await anyio.to_thread.run_sync(install_ipxe, Path(self.rt.settings.pxe.ipxe_dir), tftp_root)
        if missing:
            log.warning("pxe.ipxe_missing", tftp_root=str(tftp_root), missing=missing,
                        hint=f"apt-get install ipxe (it puts them in /usr/lib/ipxe), or copy them into {tftp_root}")
        if self.rt.settings.pxe.mode == "proxy":
            self.address = await self._interface_address()
        conf = self.dir / "dnsmasq.conf"
        _write(conf, render_conf(self.rt.settings, self.dir, self.address))
        await self.refresh()
        delay = self.RESTART_MIN_S
        # dnsmasq writes its own log (with timestamps: the boot timeline); its stderr goes
        # to the same file for what it says before the log is open
        argv = [binary, "--keep-in-foreground", f"--conf-file={conf}", f"--log-facility={self.dir / 'dnsmasq.log'}",
                f"--user={self.rt.settings.pxe.user}"]
        with open(self.dir / "dnsmasq.log", "ab") as out:
            while True:
                self._changed = anyio.Event()
                started = anyio.current_time()
                self.process = proc = await anyio.open_process(argv, stdin=DEVNULL, stdout=out, stderr=out)
                log.info("pxe.dnsmasq_started", pid=proc.pid, interface=self.rt.settings.pxe.interface)
                reload = False
                try:
                    async with anyio.create_task_group() as tg:

                        async def on_change() -> None:
                            nonlocal reload
                            await self._changed.wait()
                            await anyio.sleep(self.SETTLE_S)
                            reload = True
                            with contextlib.suppress(ProcessLookupError):  # it may have just died
                                proc.terminate()

                        tg.start_soon(on_change)
                        code = await proc.wait()
                        tg.cancel_scope.cancel()
                finally:
                    with anyio.CancelScope(shield=True):
                        await _stop(proc)
                self.process = None
                if reload:
                    self.reloads += 1
                    continue
                self.restarts += 1
                if anyio.current_time() - started > 60:
                    delay = self.RESTART_MIN_S
                log.error("pxe.dnsmasq_exited", code=code, restart_in=delay, said=_last_line(self.dir / "dnsmasq.log"))
                await anyio.sleep(delay)
                delay = min(self.RESTART_MAX_S, delay * 2)

    async def _interface_address(self) -> ipaddress.IPv4Interface:
        """Proxy mode answers for the interface's network, from its address: wait for one
        (it may itself come from the network's DHCP server after start-up)."""
        interface, delay = self.rt.settings.pxe.interface, self.RESTART_MIN_S
        while (address := interface_ipv4(interface)) is None:
            log.error("pxe.no_address", interface=interface, retry_in=delay,
                      hint="proxy mode answers for the network of the interface's IPv4 address: give it one")
            await anyio.sleep(delay)
            delay = min(self.RESTART_MAX_S, delay * 2)
        log.info("pxe.proxy", interface=interface, address=str(address))
        return address


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][-300:] if lines else ""


async def _stop(proc: anyio.abc.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        if proc.returncode is None:
            proc.terminate()
            with anyio.move_on_after(5):
                await proc.wait()
        if proc.returncode is None:
            proc.kill()
    await proc.wait()
    await proc.aclose()
