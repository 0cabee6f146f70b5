"""What the PXE VM tests boot: Debian's kernel and a tiny busybox initramfs.

**The kernel** is Debian's own ``linux-image-cloud-amd64`` (bookworm: 6.1), unpacked
from its .deb with ``dpkg -x`` into a cache — never installed, so the machine's /boot,
initramfs-tools and bootloader are not touched. Not the host's /boot kernel: a
container has none (this machine's is empty; it runs a 6.18 kernel it did not boot
from a file), and a host kernel's configuration and modules differ from machine to
machine, which would make the test depend on where it runs. The cloud flavour is a
26 MB download (the generic one is 70 MB) and has what a QEMU guest needs: virtio-net
(as modules, loaded by the initramfs), the 8250 serial console, the EFI stub.

``python -m tests.support.vmboot`` fetches it (``.ci/run`` does, before the tests;
it needs the Debian mirror, the tests do not): the cache is
``$VETTING_VM_CACHE`` or ``~/.cache/vetting/vm``, one folder per pair of package
versions (marked ``.complete`` once whole); the tests take the newest.

**The initramfs** is a newc cpio (written here, no ``cpio`` tool needed) holding
static busybox (Debian ``busybox-static``, unpacked the same way into the cache: as a
package it would replace the dynamic ``busybox`` the stages' tests use), the
virtio-net modules in load order and
``/init``, which: prints ``/proc/cmdline`` to the serial console, brings the NIC up
with DHCP, reads ``vetting.server``, ``vetting.run`` and ``vetting.token`` from the
command line, POSTs the agent's ``hello`` with that token — so the server itself says
whether the command line carried a working token — prints the answer and powers off.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

PACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"  # unpacked, not installed: it conflicts with the busybox the stages use
NIC_MODULES = ("virtio_net", "virtio_pci")  # and what they depend on
CACHE = Path(os.environ.get("VETTING_VM_CACHE") or Path.home() / ".cache" / "vetting" / "vm")

INIT = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /run
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s /bin
export PATH=/bin
hostname -F /etc/hostname
say() { echo "vetting-initramfs: $*"; }
say "cmdline: $(cat /proc/cmdline)"
for m in $(cat /lib/modules/order); do insmod "/lib/modules/$m.ko" || say "insmod $m failed"; done
ip link set lo up
iface=""
for i in 1 2 3 4 5 6 7 8 9 10; do
    iface=$(ls /sys/class/net | grep -v '^lo$' | head -n 1)
    [ -n "$iface" ] && break
    sleep 0.2
done
say "nic: $iface $(cat /sys/class/net/$iface/address)"
ip link set "$iface" up
udhcpc -i "$iface" -n -q -t 5 -T 2 -s /bin/dhcp-script || say "dhcp failed"
for word in $(cat /proc/cmdline); do
    case "$word" in
        vetting.server=*) server=${word#*=} ;;
        vetting.run=*) run=${word#*=} ;;
        vetting.token=*) token=${word#*=} ;;
    esac
done
body="{\"agent_version\": \"busybox-initramfs\", \"hostname\": \"$(hostname)\", \"mode\": \"pxe\", \"boot_id\": \"$(cat /proc/sys/kernel/random/boot_id)\"}"
# (busybox 1.35's wget -T crashes: timeout(1) bounds it instead)
if reply=$(timeout 20 wget -q -O - --header "Authorization: Bearer $token" --header "Content-Type: application/json" \
        --post-data "$body" "$server/api/v1/runs/$run/hello" 2>&1); then
    say "hello accepted: $reply"
else
    say "hello refused: $reply"
fi
sync
poweroff -f
"""

DHCP_SCRIPT = r"""#!/bin/sh
# udhcpc's hook: configure the lease it got
[ "$1" = bound ] || [ "$1" = renew ] || exit 0
ip addr flush dev "$interface"
ip addr add "$ip/${mask:-24}" dev "$interface"
ip link set "$interface" up
[ -n "$router" ] && ip route add default via "${router%% *}" dev "$interface"
echo "vetting-initramfs: lease $ip on $interface" > /dev/console
exit 0
"""


class Kernel:
    """A cache folder: ``vmlinuz``, ``modules/`` (and ``modules/order``), ``busybox``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.vmlinuz = root / "vmlinuz"
        self.modules = root / "modules"
        self.busybox = root / "busybox"
        self.version = root.name

    @property
    def complete(self) -> bool:
        return (self.root / ".complete").is_file()

    @property
    def module_order(self) -> list[str]:
        return (self.modules / "order").read_text().split()


def cached_kernel() -> Kernel | None:
    """The newest complete folder of the cache (several checkouts may share it)."""
    complete = [k for k in map(Kernel, CACHE.glob("linux-image-*")) if k.complete]
    return max(complete, key=lambda k: (k.root / ".complete").stat().st_mtime, default=None)


def _depends(ko: Path) -> list[str]:
    m = re.search(rb"depends=([A-Za-z0-9_,-]*)\x00", ko.read_bytes())
    return [d for d in (m.group(1).decode().split(",") if m else []) if d]


def _load_order(tree: Path, wanted: tuple[str, ...]) -> list[Path]:
    """Modules for ``wanted`` and their dependencies, dependencies first."""
    index = {p.name.removesuffix(".ko"): p for p in tree.rglob("*.ko")}
    order: list[Path] = []

    def visit(name: str) -> None:
        path = index.get(name.replace("-", "_")) or index.get(name)
        if path is None:
            raise SystemExit(f"module {name} is not in the kernel package")
        if path in order:
            return
        for dep in _depends(path):
            visit(dep)
        order.append(path)

    for name in wanted:
        visit(name)
    return order


def _sh(*argv: str, cwd: Path | None = None) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, cwd=cwd).stdout


def _version(package: str) -> str:
    return _sh("apt-cache", "show", "--no-all-versions", package).split("Version: ", 1)[1].split()[0]


def _unpack(package: str, version: str, work: Path) -> Path:
    """``apt-get download`` + ``dpkg -x``: the package's files under the returned folder."""
    _sh("apt-get", "download", "-q", f"{package}={version}", cwd=work)
    tree = work / package
    _sh("dpkg", "-x", str(next(work.glob(f"{package}_*.deb"))), str(tree))
    return tree


def fetch() -> Kernel:
    """Download and unpack Debian's cloud kernel and static busybox into the cache (idempotent)."""
    depends = _sh("apt-cache", "depends", PACKAGE)
    if "Depends:" not in depends:
        _sh("apt-get", "update", "-qq")
        depends = _sh("apt-cache", "depends", PACKAGE)
    image = next(ln.split()[-1] for ln in depends.splitlines() if "Depends: linux-image-" in ln)
    image_version, busybox_version = _version(image), _version(BUSYBOX_PACKAGE)
    root = CACHE / f"{image}_{image_version}+busybox_{busybox_version}".replace(":", "%3a")  # as .deb names do
    if not Kernel(root).complete:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            kernel = _unpack(image, image_version, work)
            (root / "modules").mkdir(parents=True, exist_ok=True)
            shutil.copy(next((kernel / "boot").glob("vmlinuz-*")), root / "vmlinuz")
            order = _load_order(kernel / "lib" / "modules", NIC_MODULES)
            for ko in order:
                shutil.copy(ko, root / "modules" / ko.name)
            (root / "modules" / "order").write_text("\n".join(p.name.removesuffix(".ko") for p in order) + "\n")
            shutil.copy(_unpack(BUSYBOX_PACKAGE, busybox_version, work) / "bin" / "busybox", root / "busybox")
            (root / ".complete").touch()  # last: a folder without it is an interrupted fetch
    return Kernel(root)


# -------------------------------------------------------------------- initramfs
def _newc(name: str, mode: int, data: bytes = b"", ino: int = 0, rdev: tuple[int, int] = (0, 0)) -> bytes:
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0]
    header = b"070701" + b"".join(f"{f:08x}".encode() for f in fields)
    out = header + name.encode() + b"\0"
    out += b"\0" * (-len(out) % 4)
    out += data + b"\0" * (-len(data) % 4)
    return out


def _static_elf(path: Path) -> bool:
    """A 64-bit ELF executable without a program interpreter (PT_INTERP)."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if data[:5] != b"\x7fELF\x02":
        return False
    phoff = int.from_bytes(data[0x20:0x28], "little")
    size, count = int.from_bytes(data[0x36:0x38], "little"), int.from_bytes(data[0x38:0x3A], "little")
    return all(int.from_bytes(data[phoff + i * size : phoff + i * size + 4], "little") != 3 for i in range(count))


def build_initramfs(kernel: Kernel, dest: Path) -> Path:
    """The gzip'd newc cpio described in the module docstring, at ``dest``."""
    if not _static_elf(kernel.busybox):
        raise RuntimeError(f"{kernel.busybox} is not a static busybox (Debian package busybox-static)")
    entries: list[bytes] = []
    ino = 1

    def add(name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        nonlocal ino
        entries.append(_newc(name, mode, data, ino, rdev))
        ino += 1

    for d in ("bin", "dev", "proc", "sys", "tmp", "run", "lib", "lib/modules", "etc"):
        add(d, stat.S_IFDIR | 0o755)
    add("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))  # the kernel opens it before /init runs
    add("bin/busybox", stat.S_IFREG | 0o755, kernel.busybox.read_bytes())
    add("bin/sh", stat.S_IFLNK | 0o777, b"busybox")
    add("init", stat.S_IFREG | 0o755, INIT.encode())
    add("bin/dhcp-script", stat.S_IFREG | 0o755, DHCP_SCRIPT.encode())
    add("etc/hostname", stat.S_IFREG | 0o644, b"vetting-initramfs\n")
    for name in kernel.module_order:
        add(f"lib/modules/{name}.ko", stat.S_IFREG | 0o644, (kernel.modules / f"{name}.ko").read_bytes())
    add("lib/modules/order", stat.S_IFREG | 0o644, (kernel.modules / "order").read_bytes())
    entries.append(_newc("TRAILER!!!", 0))
    dest.write_bytes(gzip.compress(b"".join(entries), compresslevel=6))
    return dest


if __name__ == "__main__":
    k = fetch()
    print(f"kernel for the VM tests: {k.vmlinuz} ({k.version}); NIC modules: {' '.join(k.module_order)}")
    sys.exit(0)
