"""Helpers of the stage tests: captured tool output under ``tests/fixtures``, loop
devices over image files, and running a stage the way the agent does."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from vetting_core.context import MemorySink, StageContext, execute_stage
from vetting_core.records import StageSpec

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


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


def need(tool: str) -> None:
    if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
        pytest.skip(f"{tool} is not installed")


async def run_stage(
    spec: StageSpec,
    workdir: Path,
    profile: str = "quick",
    params: dict[str, Any] | None = None,
    inventory: dict[str, Any] | None = None,
    spec_doc: dict[str, Any] | None = None,
):
    """Run a stage the way the agent does; return (StageResult, MemorySink)."""
    sink = MemorySink()
    merged = spec.params_for(profile)
    merged.update(params or {})
    ctx = StageContext(
        stage=spec.name, sink=sink, workdir=workdir, params=merged, profile=profile,
        inventory=inventory or {}, spec=spec_doc,
    )
    result = await execute_stage(spec, ctx)
    return result, sink


def samples(sink: MemorySink, kind: str, key_prefix: str = "") -> list:
    return [s for s in sink.samples if s.kind == kind and s.key.startswith(key_prefix)]
