"""Fixtures for the part-1 stage tests (inventory, SpecValidate, SMART, Storage, Firmware)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def fixture_text(rel: str) -> str:
    return (FIXTURES / rel).read_text()


def _loop_refused() -> str | None:
    if os.geteuid() != 0:
        return "loop devices need root"
    if shutil.which("losetup") is None:
        return "losetup is not installed"
    return None


class Loops:
    """Creates loop devices over image files in a temp dir and always detaches them."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.devices: list[str] = []
        self.mounts: list[Path] = []

    def image(self, name: str, size_mib: int = 64, where: Path | None = None) -> Path:
        path = (where or self.tmp) / name
        with open(path, "wb") as fh:
            fh.truncate(size_mib << 20)
        return path

    def attach(self, image: Path, partscan: bool = False, readonly: bool = False) -> str:
        argv = ["losetup", "-f", "--show"] + (["-P"] if partscan else []) + (["-r"] if readonly else []) + [str(image)]
        res = subprocess.run(argv, capture_output=True, text=True)
        if res.returncode != 0:
            pytest.skip(f"the machine refuses loop devices: {res.stderr.strip()}")
        dev = res.stdout.strip()
        self.devices.append(dev)
        return dev

    def tmpfs(self, size: str) -> Path:
        mnt = self.tmp / f"tmpfs{len(self.mounts)}"
        mnt.mkdir()
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True, text=True)
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs: {res.stderr.strip()}")
        self.mounts.append(mnt)
        return mnt

    def close(self) -> None:
        for dev in reversed(self.devices):
            subprocess.run(["losetup", "-d", dev], capture_output=True)
        for mnt in reversed(self.mounts):
            subprocess.run(["umount", str(mnt)], capture_output=True)


@pytest.fixture
def loops(tmp_path: Path) -> Iterator[Loops]:
    why = _loop_refused()
    if why:
        pytest.skip(why)
    lp = Loops(tmp_path)
    try:
        yield lp
    finally:
        lp.close()
