"""Ingest: group commit under concurrency, duplicates inside one group, tallies (both engines)."""

from __future__ import annotations

import anyio
import pytest

from vetting_core.model import Measurement, ThresholdRule
from vetting_core.thresholds import BUILTIN_OPERATORS, ThresholdEngine

from .conftest import sample

pytestmark = pytest.mark.anyio


async def test_concurrent_batches_and_duplicates_stored_once(env):
    run_id, tok = await env.running()
    acks = []

    async def post(seq: int) -> None:
        samples = [sample(f"2026-11-23T01:00:{i % 60:02d}.{seq:03d}Z", "Alpha", "temp", f"cpu/{i % 4}", 50.0 + (i % 45)) for i in range(50)]
        r = await env.agent("POST", f"/api/v1/runs/{run_id}/sensor", tok, json={"seq": seq, "samples": samples})
        assert r.status_code == 200, r.text
        acks.append(r.json())

    async with anyio.create_task_group() as tg:
        for seq in list(range(1, 21)) + list(range(1, 21, 2)):  # every odd batch twice, concurrently
            tg.start_soon(post, seq)
    new = [a for a in acks if not a["duplicate"]]
    assert len(new) == 20 and sum(a["stored"] for a in new) == 1000
    assert sum(1 for a in acks if a["duplicate"]) == 10
    d = await env.detail(run_id)
    assert d["measurement_count"] == 1000
    temp_rule = [t for t in d["thresholds"] if t["kind"] == "temp"][0]
    tallies = [t for t in d["tallies"] if t["threshold_id"] == temp_rule["id"]]
    assert sum(t["passed"] + t["breaches"] for t in tallies) == 1000
    breaches = sum(t["breaches"] for t in tallies)  # values ≥ 90 breach "lt 90"
    assert breaches == d["breach_count"] == sum(a["breaches"] for a in new) == 20 * 5
    assert max(t["max_observed"] for t in tallies) == 94.0


def test_chunk_tallies_equal_the_exact_loop():
    from vetting_server.database import epoch
    from vetting_server.ingest import Ingest

    ops = {o.name: o for o in BUILTIN_OPERATORS}
    rules = [
        ThresholdRule(id=1, kind="temp", key="cpu/*", op="lt", threshold=80.0),
        ThresholdRule(id=2, stage="B*", kind="temp", key="*", op="gte", threshold=10.0),
        ThresholdRule(id=3, kind="count", key="*", op="delta_lte", threshold=2.0),
        ThresholdRule(id=4, kind="state", key="*", op="regex", threshold="^ok$"),
    ]
    from datetime import UTC, datetime, timedelta

    t0 = datetime(2026, 11, 23, tzinfo=UTC)
    samples = []
    for i in range(500):
        stage = "Beta" if i % 3 else "Alpha"
        samples.append(Measurement(ts=t0 + timedelta(seconds=(i * 7) % 50), stage=stage, kind="temp", key=f"cpu/{i % 5}",
                                   value=float(i % 100) if i % 11 else None))
        samples.append(Measurement(ts=t0 + timedelta(seconds=i), stage=stage, kind="count", key="ecc", value=float(i // 100)))
        samples.append(Measurement(ts=t0, stage=stage, kind="state", key="link", value=None, text="ok" if i % 4 else "down"))
    ev = ThresholdEngine(rules, ops).evaluate(samples)
    engine = ThresholdEngine(rules, ops)  # a fresh one: counter baselines start over
    lean = engine.evaluate(samples, per_sample=False)
    assert lean.evaluations == [] and lean.breaches == ev.breaches
    ing = Ingest.__new__(Ingest)
    ing.dialect = "sqlite"
    ing._ts = epoch
    fast = sorted(ing._tallies(7, samples, lean, engine), key=repr)
    assert fast == sorted(_exact_tallies(7, samples, ev, engine), key=repr)
    assert sum(t[4] + t[5] for t in fast) == len(ev.evaluations) == 500 + 333 + 500 + 500  # rule 2: the 333 Beta temps


def _exact_tallies(run_id, samples, ev, engine):
    """The reference: one pass over every per-sample evaluation."""
    from vetting_server.database import epoch

    agg = {}
    for rule_i, si, obs, ok in ev.evaluations:
        s = samples[si]
        a = agg.setdefault((engine.rules[rule_i].id, s.stage, s.key), [0, 0, [], []])
        a[0 if ok else 1] += 1
        if isinstance(obs, float) and obs == obs and obs not in (float("inf"), float("-inf")):
            a[2].append(obs)
        a[3].append(s.ts)
    return [
        (run_id, rid, stage, key, p, b, min(nums) if nums else None, max(nums) if nums else None,
         epoch(min(tss)), epoch(max(tss)))
        for (rid, stage, key), (p, b, nums, tss) in agg.items()
    ]
