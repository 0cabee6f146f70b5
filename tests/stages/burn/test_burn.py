"""Burn: the sustained-breach detector (pure) and the stage for real, including a
breach that must stop it long before its duration."""

from __future__ import annotations

import math
import time
from pathlib import Path

import anyio
import pytest

from vetting_core.model import Verdict
from vetting_stages.burn.breach import BreachRule, SustainedBreachDetector
from vetting_stages.burn.stage import STAGE as BURN
from vetting_stages.burn.stage import hwmon_temps

from ..helpers import need, run_stage, samples


def hot(window_s=10.0, min_samples=3):
    return SustainedBreachDetector.from_config(
        [{"kind": "temperature", "key": "cpu/*", "op": "lte", "threshold": 90, "window_s": window_s,
          "min_samples": min_samples}]
    )


def test_breach_needs_both_window_and_samples():
    d = hot(window_s=10, min_samples=3)
    assert d.feed("temperature", "cpu/pkg", 95, 0.0) is None
    assert d.feed("temperature", "cpu/pkg", 96, 5.0) is None  # 2 samples, 5 s
    assert d.feed("temperature", "cpu/pkg", 97, 9.9) is None  # 3 samples, 9.9 s
    b = d.feed("temperature", "cpu/pkg", 97, 10.0)
    assert b is not None and b.samples == 4 and b.since == 0.0 and b.last_value == 97
    assert "sustained breach" in str(b) and "10.0s" in str(b)
    assert d.feed("temperature", "cpu/pkg", 99, 11.0) is None  # reported once per episode


def test_breach_resets_on_a_good_sample():
    d = hot(window_s=2, min_samples=2)
    d.feed("temperature", "cpu/pkg", 95, 0.0)
    d.feed("temperature", "cpu/pkg", 80, 1.0)  # recovered
    assert d.feed("temperature", "cpu/pkg", 95, 2.0) is None
    assert d.feed("temperature", "cpu/pkg", 95, 3.0) is None  # only 1 s into the new episode
    assert d.feed("temperature", "cpu/pkg", 95, 4.0) is not None


def test_breach_series_are_independent_and_filtered():
    d = hot(window_s=1, min_samples=2)
    d.feed("temperature", "cpu/a", 95, 0.0)
    assert d.feed("temperature", "cpu/b", 95, 1.0) is None
    assert d.feed("temperature", "gpu/a", 200, 1.0) is None  # key does not match
    assert d.feed("memory", "cpu/a", 200, 1.0) is None  # kind does not match
    assert d.open_breaches() == {("temperature", "cpu/a"): 1, ("temperature", "cpu/b"): 1}
    assert d.feed("temperature", "cpu/a", 95, 1.5) is not None


@pytest.mark.parametrize("bad", [None, math.nan, "garbage"])
def test_missing_value_counts_as_violation(bad):
    d = hot(window_s=0, min_samples=2)
    d.feed("temperature", "cpu/pkg", bad, 0.0)
    assert d.feed("temperature", "cpu/pkg", bad, 0.1) is not None


def test_rule_validation():
    with pytest.raises(ValueError, match="operator"):
        BreachRule("t", "*", "delta_lte", 0)
    with pytest.raises(ValueError, match="unknown breach rule fields"):
        BreachRule.from_mapping({"kind": "t", "op": "lt", "threshold": 1, "windw_s": 3})
    with pytest.raises(ValueError):
        BreachRule("t", "*", "lt", 1, min_samples=0)


def test_hwmon_temps_reader(tmp_path):
    hw = tmp_path / "hwmon3"
    hw.mkdir()
    (hw / "name").write_text("k10temp\n")
    (hw / "temp1_input").write_text("61250\n")
    (hw / "temp1_label").write_text("Tctl\n")
    assert hwmon_temps(tmp_path) == {"k10temp/Tctl": 61.25}


pytestmark = pytest.mark.anyio


async def test_burn_runs_everything_together(tmp_path):
    need("stress-ng")
    need("fio")
    res, sink = await run_stage(
        BURN, tmp_path,
        params={"duration_s": 3, "memory_max_bytes": 512 << 20, "storage_file_size": "32M", "sample_interval_s": 0.5},
    )
    assert res.verdict is Verdict.passed, res.reason
    assert res.summary["workers"] == ["cpu", "memory", "storage"]
    assert res.summary["stress_ng"]["burn-cpu"]["verdict"] == "passed"
    assert res.summary["stress_ng"]["burn-memory"]["verdict"] == "passed"
    assert samples(sink, "storage", "burn/read_iops")[0].value > 0
    assert len(samples(sink, "memory", "mem_available_bytes")) >= 3
    assert not (tmp_path / "burn-fio.dat").exists(), "scratch file removed"


def _our_stress_ng(marker: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker in (d / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


def _children_of(pids: list[int]) -> list[int]:
    kids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                status = (d / "status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("PPid:") and int(line.split()[1]) in pids:
                    kids.append(int(d.name))
    return kids


async def test_sustained_breach_stops_the_burn_early(tmp_path):
    need("stress-ng")
    rule = {"kind": "memory", "key": "mem_available_bytes", "op": "lt", "threshold": 1,  # never true
            "window_s": 1.0, "min_samples": 2, "name": "impossible limit"}
    seen: list[int] = []

    async def watch():
        while True:
            seen.extend(p for p in _our_stress_ng(str(tmp_path)) if p not in seen)
            await anyio.sleep(0.1)

    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        res, sink = await run_stage(
            BURN, tmp_path,
            params={"duration_s": 60, "storage": False, "memory_max_bytes": 256 << 20,
                    "sample_interval_s": 0.3, "breach_rules": [rule]},
        )
        tg.cancel_scope.cancel()
    elapsed = time.monotonic() - started
    assert res.verdict is Verdict.failed
    assert "sustained breach of 'impossible limit'" in res.reason
    assert elapsed < 20, f"the burn ran {elapsed:.0f}s; it should stop at the breach"
    assert seen, "stress-ng was running"
    await anyio.sleep(1.0)
    alive = [p for p in seen if Path(f"/proc/{p}").exists()]
    assert not alive and not _children_of(seen), "stress-ng (or its workers) survived the cancelled burn"


async def test_invalid_breach_rules_fail_clearly(tmp_path):
    res, _ = await run_stage(BURN, tmp_path, params={"breach_rules": [{"kind": "x", "op": "nope", "threshold": 1}]})
    assert res.verdict is Verdict.failed and "invalid breach_rules" in res.reason
