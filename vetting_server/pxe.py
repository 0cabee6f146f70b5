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

``pxe.dhcp_range`` is a dnsmasq ``dhcp-range`` with addresses (the vetting VLAN is
the server's own); proxy-DHCP beside another DHCP server is not supported here: point
that server's PXE options at ``GET /ipxe/{mac}`` and leave ``pxe.enabled`` off.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from subprocess import DEVNULL
from typing import Any

import anyio
import anyio.abc
import structlog

from vetting_core.tools import ToolNotFound, which

from .runtime import Runtime

log = structlog.get_logger()


def render_conf(settings: Any, pxe_dir: Path) -> str:
    """The dnsmasq configuration for ``settings.pxe`` (validated at start-up)."""
    p = settings.pxe
    tftp_root = Path(p.tftp_root).resolve()
    lines = [
        "# written by vetting (vetting_server/pxe.py); changes are overwritten",
        "port=0",  # no DNS: DHCP and TFTP only
        f"interface={p.interface}",
        "bind-interfaces",
        f"dhcp-range={p.dhcp_range}",
        f"dhcp-hostsfile={pxe_dir / 'hosts'}",
        f"dhcp-optsfile={pxe_dir / 'opts'}",
        "dhcp-ignore=tag:!known",  # gate 1: registered MACs only
        "dhcp-match=set:ipxe,175",
        # iPXE's "no-pxedhcp" (option 175.176): there is no ProxyDHCP server here, so
        # iPXE need not wait for one before it takes the offer (~10 s per boot)
        "dhcp-option=tag:ipxe,encap:175,176,1b",
        "dhcp-vendorclass=set:efi64,PXEClient:Arch:00007",
        "dhcp-vendorclass=set:efi64,PXEClient:Arch:00009",
        "dhcp-boot=tag:!ipxe,tag:efi64,ipxe.efi",
        "dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe",
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


def render_hosts(hosts: list[dict[str, Any]], public_url: str) -> tuple[str, str]:
    """(``hosts`` file, ``opts`` file) for the registered hosts."""
    host_lines, opt_lines = [], []
    for h in hosts:
        tag = f"h{int(h['id'])}"
        host_lines.append(f"{h['mac']},set:known,set:{tag}")
        opt_lines.append(f"tag:{tag},tag:ipxe,option:bootfile-name,{public_url}/ipxe/{h['mac']}")
    return "\n".join(host_lines) + "\n", "\n".join(opt_lines) + "\n"


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
        self._changed = anyio.Event()

    @property
    def enabled(self) -> bool:
        return bool(self.rt.settings.pxe.enabled)

    async def refresh(self) -> None:
        """Rewrite the host files from the database; dnsmasq is restarted to read them."""
        if not self.enabled:
            return
        rows = await self.rt.db.fetch("SELECT id, mac FROM hosts ORDER BY id")
        hosts, opts = render_hosts([dict(r) for r in rows], self.rt.public_url)
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
        conf = self.dir / "dnsmasq.conf"
        _write(conf, render_conf(self.rt.settings, self.dir))
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
