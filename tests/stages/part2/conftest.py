"""Helpers for the part-2 stage tests (CPUStress, Memory, Network, GPU, PSU, Burn)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from vetting_core.context import MemorySink, StageContext, execute_stage
from vetting_core.records import StageSpec

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES


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
