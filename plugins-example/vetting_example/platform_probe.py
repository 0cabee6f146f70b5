"""The ``platform`` probe: how the machine booted and what the kernel says about itself.

Inventory sections it contributes:

- ``boot``: ``firmware`` (``"uefi"`` or ``"bios"``), ``secure_boot`` and ``setup_mode``
  (``True``/``False``, ``None`` when not UEFI or unreadable), ``efi_bits`` (32/64).
- ``kernel``: ``release``, ``version``, ``cmdline``, ``tainted`` (the raw mask),
  ``taint_flags`` (letters as in ``Documentation/admin-guide/tainted-kernels.rst``) and
  ``machine_check`` — True when the kernel saw a machine check exception (taint ``M``),
  which on a server under test usually means failing hardware.

:func:`read_platform` is pure with respect to a root directory, so tests point it at
fixture trees; the probe reads the real ``/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# efivarfs names: <Name>-<vendor GUID>; EFI_GLOBAL_VARIABLE
EFI_GLOBAL = "8be4df61-93ca-11d2-aa0d-e0f4a4c7fe0b"

# bit -> letter, from the kernel's tainted-kernels documentation
TAINT_FLAGS: tuple[tuple[int, str, str], ...] = (
    (0, "P", "proprietary module loaded"),
    (1, "F", "module force loaded"),
    (2, "S", "kernel running on an out of specification system"),
    (3, "R", "module force unloaded"),
    (4, "M", "processor reported a Machine Check Exception"),
    (5, "B", "bad page referenced or unexpected page flags"),
    (6, "U", "taint requested by userspace"),
    (7, "D", "kernel died recently (OOPS or BUG)"),
    (8, "A", "ACPI table overridden by user"),
    (9, "W", "kernel issued warning"),
    (10, "C", "staging driver loaded"),
    (11, "I", "workaround for bug in platform firmware applied"),
    (12, "O", "externally-built (out-of-tree) module loaded"),
    (13, "E", "unsigned module loaded"),
    (14, "L", "soft lockup occurred"),
    (15, "K", "kernel has been live patched"),
    (16, "X", "auxiliary taint, defined for and used by distros"),
    (17, "T", "kernel was built with the struct randomization plugin"),
    (18, "N", "an in-kernel test has been run"),
    (19, "J", "userspace used a mutating debug operation in fwctl"),
)


def decode_taint(mask: int) -> list[str]:
    return [letter for bit, letter, _ in TAINT_FLAGS if mask >> bit & 1]


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return None


def _efi_bool(path: Path) -> bool | None:
    """An efivarfs variable: 4 bytes of attributes, then the value (1 byte here)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if len(data) < 5:
        return None
    return data[4] == 1


def read_boot(root: Path) -> dict[str, Any]:
    efi = root / "sys/firmware/efi"
    if not efi.is_dir():
        return {"firmware": "bios", "secure_boot": None, "setup_mode": None, "efi_bits": None}
    bits = _read(efi / "fw_platform_size")
    return {
        "firmware": "uefi",
        "secure_boot": _efi_bool(efi / "efivars" / f"SecureBoot-{EFI_GLOBAL}"),
        "setup_mode": _efi_bool(efi / "efivars" / f"SetupMode-{EFI_GLOBAL}"),
        "efi_bits": int(bits) if bits and bits.isdigit() else None,
    }


def read_kernel(root: Path) -> dict[str, Any]:
    tainted_raw = _read(root / "proc/sys/kernel/tainted")
    tainted = int(tainted_raw) if tainted_raw and tainted_raw.isdigit() else None
    flags = decode_taint(tainted) if tainted is not None else []
    return {
        "release": _read(root / "proc/sys/kernel/osrelease"),
        "version": _read(root / "proc/sys/kernel/version"),
        "cmdline": _read(root / "proc/cmdline"),
        "tainted": tainted,
        "taint_flags": flags,
        "machine_check": "M" in flags,
    }


def read_platform(root: Path | str = "/") -> dict[str, Any]:
    """The probe's fragment for the machine whose filesystem is at ``root``."""
    root = Path(root)
    fragment: dict[str, Any] = {}
    unavailable: dict[str, str] = {}
    if not (root / "proc/sys/kernel").is_dir():
        unavailable["kernel"] = f"{root / 'proc'} is not mounted"
    else:
        fragment["kernel"] = read_kernel(root)
    if not (root / "sys/firmware").is_dir():
        unavailable["boot"] = f"{root / 'sys/firmware'} is missing (sysfs not mounted?)"
    else:
        fragment["boot"] = read_boot(root)
    if unavailable:
        fragment["unavailable"] = unavailable
    return fragment


async def collect_platform() -> dict[str, Any]:
    return read_platform("/")
