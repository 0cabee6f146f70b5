"""QEMU virtual machines that boot from the network, for the PXE tests.

    argv = pxe_vm_argv(firmware="uefi", mac="52:54:00:16:00:02", tap=tap,
                       console=tmp_path / "console.log", workdir=tmp_path)
    vm = subprocess.Popen(in_namespace(ns, argv))   # or: an ipmi_sim power_on_cmd

A diskless machine with one virtio NIC on ``tap``, booting only from it: ``bios``
(SeaBIOS, whose NIC option ROM is iPXE from Debian's ``ipxe-qemu``: it asks DHCP as
iPXE at once) or ``uefi`` (OVMF from Debian's ``ovmf``, the NIC without option ROM:
the firmware's own PXE client fetches ``ipxe.efi`` over TFTP first, then iPXE asks
again). TCG only (KVM does not
run guests on these machines); the serial console goes to ``console``; the machine
exits when the guest powers off (``-no-reboot`` turns a reboot or a kernel panic
into an exit too); ``timeout`` bounds it whatever happens. ``require_qemu`` skips the
test with the missing package named.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

QEMU = "qemu-system-x86_64"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
VIRTIO_ROM = Path("/usr/lib/ipxe/qemu/efi-virtio.rom")  # BIOS and UEFI iPXE in one ROM


def require_qemu(firmware: str) -> None:
    if shutil.which(QEMU) is None:
        pytest.skip(f"{QEMU} is not installed (Debian package qemu-system-x86)")
    if not VIRTIO_ROM.is_file():
        pytest.skip(f"{VIRTIO_ROM} is missing (Debian package ipxe-qemu)")
    if firmware == "uefi" and not (OVMF_CODE.is_file() and OVMF_VARS.is_file()):
        pytest.skip(f"{OVMF_CODE} is missing (Debian package ovmf)")


def pxe_vm_argv(*, firmware: str, mac: str, tap: str, console: Path, workdir: Path, memory_mb: int = 512,
                limit_s: int = 240, ipxe_rom: bool | None = None, extra: tuple[str, ...] = ()) -> list[str]:
    """``ipxe_rom``: the NIC carries iPXE as its option ROM (default for ``bios``: SeaBIOS
    has no network boot of its own); without it (default for ``uefi``) the firmware's
    own PXE client boots, as on most servers, and fetches ``ipxe.efi`` over TFTP."""
    if ipxe_rom is None:
        ipxe_rom = firmware == "bios"
    argv = ["timeout", "--kill-after=5", str(limit_s), QEMU, "-name", f"vetting-pxe-{firmware}",
            "-machine", "q35" if firmware == "uefi" else "pc", "-accel", "tcg", "-m", str(memory_mb), "-smp", "1",
            "-display", "none", "-monitor", "none", "-serial", f"file:{console}", "-no-reboot",
            "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
            # the ROM QEMU finds itself (Debian: /usr/lib/ipxe/qemu/efi-virtio.rom); a romfile= with
            # that very path leaves SeaBIOS without the NIC's option ROM (QEMU 7.2, seen here)
            "-device", f"virtio-net-pci,netdev=n0,mac={mac},bootindex=1" + ("" if ipxe_rom else ",romfile=")]
    if firmware == "uefi":
        vars_fd = workdir / "OVMF_VARS.fd"
        shutil.copyfile(OVMF_VARS, vars_fd)  # the machine's own NVRAM, fresh each boot
        argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                 "-drive", f"if=pflash,format=raw,unit=1,file={vars_fd}"]
    return [*argv, *extra]


def in_namespace(ns: str, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]
