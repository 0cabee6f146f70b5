"""Threshold engine throughput: 100 rules judged against 1,000,000 samples.

Run:  .venv/bin/python bench/thresholds.py [--samples N] [--batch N] [--repeats N]

The samples imitate what a deep run streams: temperatures, fan speeds, power, clock
frequencies, disk and network throughput, SMART/EDAC/PCIe counters and a few text
samples (link state, firmware version), spread over the built-in stages and a few
hundred sensor keys. They are judged in sensor-batch sized chunks, as the server
does. An *evaluation* is one (rule, sample) pair whose stage, kind and key match.
Both result forms are measured: per-sample ``Evaluation`` tuples (``evaluate(b)``) and
the same judgements as chunks only (``evaluate(b, per_sample=False)``, what the
server's sensor path uses).

The baseline is the obvious implementation, in the same process: for every sample,
for every rule, fnmatch stage and key and call the operator's ``check``. It is
measured on a slice (it is ~10x slower) and also serves as an oracle: the engine's
verdicts on that slice, in both forms, must be identical.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec  # noqa: E402

from vetting_core.model import Measurement, Severity, ThresholdRule  # noqa: E402
from vetting_core.protocol import SensorBatch  # noqa: E402
from vetting_core.thresholds import BUILTIN_OPERATORS, ThresholdEngine, _num  # noqa: E402

OPERATORS = {op.name: op for op in BUILTIN_OPERATORS}

STAGES = ["CPUStress", "Memory", "Storage", "Network", "GPU", "PSU", "Burn", "SMART"]


def series_catalogue(rng: random.Random) -> list[tuple[str, str, str, str]]:
    """(stage, kind, key, generator) for a 2-socket, 8-disk, 4-NIC, 4-GPU server."""
    out: list[tuple[str, str, str, str]] = []
    for stage in STAGES:
        for sock in range(2):
            out.append((stage, "temp", f"cpu/package{sock}", "temp"))
            for core in range(0, 32, 4):
                out.append((stage, "temp", f"cpu/core{sock * 32 + core}", "temp"))
            out.append((stage, "power", f"cpu/package{sock}", "power"))
            out.append((stage, "freq", f"cpu/package{sock}", "freq"))
        for fan in range(6):
            out.append((stage, "fan", f"bmc/fan{fan}", "fan"))
        for psu in range(2):
            out.append((stage, "power", f"psu{psu}/input", "power"))
            out.append((stage, "voltage", f"psu{psu}/12v", "voltage"))
        for dimm in range(0, 16, 4):
            out.append((stage, "temp", f"dimm/{chr(65 + dimm // 4)}{dimm % 4}", "temp"))
    for disk in [f"nvme{i}n1" for i in range(4)] + [f"sd{c}" for c in "abcd"]:
        out.append(("Storage", "throughput", f"{disk}/read_mbps", "throughput"))
        out.append(("Storage", "throughput", f"{disk}/write_mbps", "throughput"))
        out.append(("Storage", "temp", f"{disk}/composite", "temp"))
        out.append(("SMART", "counter", f"{disk}/reallocated_sectors", "counter"))
        out.append(("SMART", "counter", f"{disk}/media_errors", "counter"))
        out.append(("Burn", "counter", f"{disk}/media_errors", "counter"))
    for nic in range(4):
        out.append(("Network", "throughput", f"eth{nic}/rx_gbps", "gbps"))
        out.append(("Network", "throughput", f"eth{nic}/tx_gbps", "gbps"))
        out.append(("Network", "counter", f"eth{nic}/rx_crc_errors", "counter"))
        out.append(("Network", "link", f"eth{nic}/state", "text"))
    for gpu in range(4):
        for stage in ("GPU", "Burn"):
            out.append((stage, "temp", f"gpu{gpu}/core", "temp"))
            out.append((stage, "temp", f"gpu{gpu}/hbm", "temp"))
            out.append((stage, "power", f"gpu{gpu}/board", "power"))
            out.append((stage, "counter", f"gpu{gpu}/ecc_dbe", "counter"))
            out.append((stage, "counter", f"gpu{gpu}/xid", "counter"))
            out.append((stage, "throughput", f"gpu{gpu}/gflops", "gflops"))
    for stage in STAGES:
        out.append((stage, "counter", "edac/mc0/ce", "counter"))
        out.append((stage, "counter", "edac/mc0/ue", "counter"))
        out.append((stage, "counter", "pcie/0000:17:00.0/replay", "counter"))
    out.append(("InventoryCheck", "firmware", "bios/version", "fwtext"))
    out.append(("InventoryCheck", "firmware", "bmc/version", "fwtext"))
    rng.shuffle(out)
    return out


def make_samples(n: int, seed: int = 7) -> list[Measurement]:
    rng = random.Random(seed)
    cat = series_catalogue(rng)
    counters: dict[int, float] = {}
    ts = datetime(2026, 11, 23, tzinfo=UTC)
    samples: list[Measurement] = []
    append = samples.append
    for i in range(n):
        si = rng.randrange(len(cat))
        stage, kind, key, gen = cat[si]
        text = None
        if gen == "temp":
            value = rng.gauss(52, 5)
        elif gen == "power":
            value = rng.gauss(280, 40)
        elif gen == "freq":
            value = rng.gauss(3100, 150)
        elif gen == "fan":
            value = rng.gauss(9000, 1500)
        elif gen == "voltage":
            value = rng.gauss(12.0, 0.15)
        elif gen == "throughput":
            value = rng.gauss(3200, 120) if key.startswith("nvme") else rng.gauss(250, 15)
        elif gen == "gbps":
            value = rng.gauss(24.6, 0.4)
        elif gen == "gflops":
            value = rng.gauss(51500, 1200)
        elif gen == "counter":
            c = counters.get(si, float(rng.randrange(0, 5)))
            if rng.random() < 0.00002:  # a rare new error: the breach to find
                c += 1
            counters[si] = c
            value = c
        elif gen == "text":
            value, text = None, ("up" if rng.random() < 0.999 else "down")
        else:  # fwtext
            value, text = None, rng.choice(["2.19.1", "2.19.1", "2.18.0"])
        if value is not None and rng.random() < 0.0005:
            value = float("nan")  # a sensor printing garbage
        append(Measurement(ts=ts, stage=stage, kind=kind, key=key, value=value, unit="", text=text))
    return samples


def make_rules(rng: random.Random) -> list[ThresholdRule]:
    """100 rules, the mix a deep profile plus host overrides produces."""
    rules: list[ThresholdRule] = []

    def add(**kw):
        rules.append(ThresholdRule(**kw))

    for stage in STAGES:
        add(stage=stage, kind="temp", key="cpu/package*", op="lte", threshold=95.0)
        add(stage=stage, kind="temp", key="cpu/*", op="lte", threshold=85.0, severity=Severity.warning)
        add(stage=stage, kind="temp", key="cpu/core*", op="lt", threshold=100.0)
        add(stage=stage, kind="fan", key="bmc/fan*", op="gte", threshold=1500.0, severity=Severity.warning)
        add(stage=stage, kind="voltage", key="psu*/12v", op="within_pct", threshold=5.0, nominal=12.0)
        add(stage=stage, kind="counter", key="edac/*/ue", op="delta_lte", threshold=0.0)
    # 48 so far
    add(stage="*", kind="counter", key="edac/*/ce", op="delta_lte", threshold=10.0, severity=Severity.warning)
    add(stage="*", kind="temp", key="dimm/*", op="lte", threshold=85.0)
    add(stage="*", kind="power", key="psu*/input", op="lte", threshold=1100.0)
    add(stage="*", kind="freq", key="cpu/*", op="gte", threshold=2000.0, severity=Severity.warning)
    add(stage="*", kind="counter", key="pcie/*/replay", op="delta_lte", threshold=0.0, severity=Severity.warning)
    add(stage="CPU*", kind="power", key="cpu/*", op="lte", threshold=400.0)
    for disk in [f"nvme{i}n1" for i in range(4)]:
        add(stage="Storage", kind="throughput", key=f"{disk}/read_mbps", op="within_pct", threshold=15.0, nominal=3200.0)
        add(stage="Storage", kind="throughput", key=f"{disk}/write_mbps", op="gte", threshold=1500.0)
    add(stage="Storage", kind="throughput", key="sd?/*", op="gt", threshold=150.0)
    add(stage="Storage", kind="temp", key="nvme*/composite", op="lte", threshold=70.0)
    add(stage="Storage", kind="temp", key="sd?/composite", op="lte", threshold=55.0)
    add(stage="SMART", kind="counter", key="*/reallocated_sectors", op="delta_lte", threshold=0.0)
    add(stage="*", kind="counter", key="*/media_errors", op="delta_lte", threshold=0.0)
    for nic in range(4):
        add(stage="Network", kind="throughput", key=f"eth{nic}/rx_gbps", op="within_pct", threshold=10.0, nominal=25.0)
        add(stage="Network", kind="throughput", key=f"eth{nic}/tx_gbps", op="within_pct", threshold=10.0, nominal=25.0)
    add(stage="Network", kind="counter", key="eth*/rx_crc_errors", op="delta_lte", threshold=0.0)
    add(stage="Network", kind="link", key="eth*/state", op="eq", threshold="up")
    add(stage="Network", kind="link", key="eth0/state", op="regex", threshold=r"^(up|unknown)$")
    for stage in ("GPU", "Burn"):
        add(stage=stage, kind="temp", key="gpu*/core", op="lte", threshold=87.0)
        add(stage=stage, kind="temp", key="gpu*/hbm", op="lte", threshold=95.0)
        add(stage=stage, kind="power", key="gpu*/board", op="lte", threshold=700.0)
        add(stage=stage, kind="counter", key="gpu*/ecc_dbe", op="delta_lte", threshold=0.0)
        add(stage=stage, kind="counter", key="gpu*/xid", op="delta_lte", threshold=0.0)
        add(stage=stage, kind="throughput", key="gpu*/gflops", op="within_pct", threshold=8.0, nominal=52000.0)
    add(stage="InventoryCheck", kind="firmware", key="bios/version", op="eq", threshold="2.19.1")
    add(stage="InventoryCheck", kind="firmware", key="bmc/version", op="ne", threshold="1.0.0")
    add(stage="InventoryCheck", kind="firmware", key="*", op="regex", threshold=r"^\d+\.\d+\.\d+$")
    add(stage="Burn", kind="temp", key="*", op="lt", threshold=105.0, severity=Severity.info)
    add(stage="*", kind="fan", key="bmc/fan0", op="lte", threshold=20000.0, severity=Severity.info)
    add(stage="P*", kind="power", key="psu0/*", op="gt", threshold=50.0)
    # host overrides on specific sensors
    add(stage="PSU", kind="voltage", key="psu1/12v", op="gte", threshold=11.4, source="host_override")
    add(stage="*", kind="temp", key="cpu/core0", op="ne", threshold=0.0, severity=Severity.info,
        source="host_override")
    add(stage="Memory", kind="temp", key="dimm/A?", op="gte", threshold=10.0, severity=Severity.info)
    add(stage="*", kind="power", key="gpu0/*", op="gte", threshold=0.0, severity=Severity.info)
    assert len(rules) == 100, len(rules)
    return rules


def as_batches(samples: list[Measurement], batch: int) -> list[list[Measurement]]:
    """Round-trip through the wire format, as the server receives sensor batches:
    decoded samples carry fresh (unhashed) strings, which is the realistic case."""
    enc = msgspec.json.Encoder()
    dec = msgspec.json.Decoder(SensorBatch)
    return [
        dec.decode(enc.encode(SensorBatch(seq=i + 1, samples=samples[start:start + batch]))).samples
        for i, start in enumerate(range(0, len(samples), batch))
    ]


def run_engine(rules, samples: list[Measurement], batch: int, per_sample: bool) -> tuple[float, int, int]:
    """``per_sample``: an Evaluation tuple per judgement; else the judgements as chunks
    (one per series and rule: sample indices, observed values, verdicts), which is
    what the server's sensor path asks for."""
    batches = as_batches(samples, batch)  # not timed: decoding is the API's job
    engine = ThresholdEngine(rules, OPERATORS)
    n_eval = n_breach = 0
    gc.collect()
    t0 = time.perf_counter()
    for b in batches:
        res = engine.evaluate(b, per_sample=per_sample)
        n_eval += len(res.evaluations) if per_sample else sum(len(c.samples) for c in res.chunks)
        n_breach += len(res.breaches)
    dt = time.perf_counter() - t0
    del batches, res
    return dt, n_eval, n_breach


def naive(rules, samples) -> tuple[float, list[tuple[int, int, bool]]]:
    """Per sample, per rule: fnmatch + check (the baseline and the oracle)."""
    ops = [OPERATORS[r.op] for r in rules]
    thresholds = [
        __import__("re").compile(r.threshold) if r.op == "regex" else r.threshold for r in rules
    ]
    baselines: dict[tuple[str, str, str], float] = {}
    out: list[tuple[int, int, bool]] = []
    gc.disable()  # same conditions as the engine, which pauses the collector itself
    t0 = time.perf_counter()
    for si, s in enumerate(samples):
        for ri, r in enumerate(rules):
            if r.kind != s.kind or not fnmatchcase(s.stage, r.stage) or not fnmatchcase(s.key, r.key):
                continue
            op = ops[ri]
            if op.textual:
                observed = s.text if s.text is not None else s.value
            elif op.baseline:
                series = (s.stage, s.kind, s.key)
                if series not in baselines:
                    v = _num(s.value)
                    if v == v:
                        baselines[series] = v
                observed = _num(s.value) - baselines.get(series, float("nan"))
            else:
                observed = s.value
            out.append((ri, si, bool(op.check(observed, thresholds[ri], r.nominal))))
    dt = time.perf_counter() - t0
    gc.enable()
    return dt, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=5_000, help="samples per evaluate() call (a sensor batch)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline-samples", type=int, default=20_000)
    args = ap.parse_args()

    rng = random.Random(11)
    rules = make_rules(rng)
    t0 = time.perf_counter()
    samples = make_samples(args.samples)
    print(f"{len(rules)} rules, {len(samples):,} samples over "
          f"{len({(s.stage, s.kind, s.key) for s in samples[:200_000]})} series "
          f"(generated in {time.perf_counter() - t0:.1f}s), batch {args.batch:,}")

    # oracle check on the baseline slice: same verdicts, same order within a (rule, sample)
    sl = samples[: args.baseline_samples]
    base_t, base_out = naive(rules, sl)
    engine = ThresholdEngine(rules, OPERATORS)
    res = engine.evaluate(sl)
    got = sorted((e.rule, e.sample, e.passed) for e in res.evaluations)
    chunked = sorted((c.rule, i, bool(ok)) for c in res.chunks for i, ok in zip(c.samples, c.passed))
    if got != sorted(base_out) or chunked != got:
        raise SystemExit("MISMATCH: engine and naive baseline disagree on the slice")
    base_rate = len(base_out) / base_t
    print(f"baseline (naive per-sample loop over all rules, {len(sl):,} samples): "
          f"{len(base_out):,} evaluations in {base_t:.2f}s = {base_rate:,.0f} evaluations/s; "
          f"engine agrees on every verdict")

    for label, per_sample in (("per-sample Evaluation tuples", True), ("chunks (the server's sensor path)", False)):
        times, evals, breaches = [], 0, 0
        for r in range(args.repeats):
            dt, evals, breaches = run_engine(rules, samples, args.batch, per_sample)
            times.append(dt)
            print(f"  {label}, run {r + 1}: {dt:.2f}s  {evals / dt:,.0f} evaluations/s  {len(samples) / dt:,.0f} samples/s")
        med = statistics.median(times)
        rate = evals / med
        print(f"engine, {label}: {evals:,} evaluations ({breaches:,} breaches) for {len(samples):,} samples; "
              f"median {med:.2f}s of {args.repeats} runs (min {min(times):.2f}s, max {max(times):.2f}s)")
        print(f"engine, {label}: {rate:,.0f} evaluations/s, {len(samples) / med:,.0f} samples/s (median); "
              f"ratio to the naive baseline {rate / base_rate:.1f}x")

if __name__ == "__main__":
    main()
