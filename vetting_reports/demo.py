"""A synthetic but realistic run: the input of ``bench/report.py``, the report tests and
the example report in the docs.

``demo_record(samples=…, failed=True)`` builds a 2-socket server run through the
built-in pipeline with sensor series (temperatures, power, fans, throughput), SMART
counters, textual samples, threshold rules and their breaches, a firmware snapshot,
artifacts and operator events. ``python -m vetting_reports.demo OUT_DIR`` writes the
three report files of such a run.
"""

from __future__ import annotations

import math
import random
import sys
from datetime import UTC, datetime, timedelta

from vetting_core.model import (
    Artifact,
    Event,
    FirmwareSnapshot,
    Host,
    Measurement,
    Run,
    RunRecord,
    Severity,
    SpecDiff,
    Stage,
    SubStep,
    ThresholdEvaluation,
    ThresholdRule,
    Verdict,
)

T0 = datetime(2026, 11, 20, 8, 0, 0, tzinfo=UTC)

# (name, ordinal, minutes)
STAGES = [
    ("InventoryCheck", 100, 1),
    ("SpecValidate", 150, 0.2),
    ("Firmware", 200, 1),
    ("SMART", 300, 3),
    ("CPUStress", 400, 30),
    ("Memory", 450, 20),
    ("Storage", 500, 25),
    ("Network", 600, 5),
    ("GPU", 700, 0.1),
    ("PSU", 800, 5),
    ("Burn", 900, 60),
]

INVENTORY = {
    "system": {
        "vendor": "Dell Inc.",
        "product": "PowerEdge R650",
        "serial": "7XK2Q93",
        "bios_vendor": "Dell Inc.",
        "bios_version": "1.10.2",
        "bios_date": "2024-03-01",
        "hostname": "web-07",
    },
    "cpu": {
        "model": "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz",
        "vendor": "GenuineIntel",
        "sockets": 2,
        "cores": 64,
        "threads": 128,
        "max_mhz": 3200.0,
        "microcode": "0xd0003b9",
    },
    "memory": {
        "total_gib": 512.0,
        "os_total_gib": 503.6,
        "dimms": [
            {
                "locator": f"A{i}",
                "size_gib": 32.0,
                "speed_mts": 3200,
                "type": "DDR4",
                "manufacturer": "Samsung",
                "part_number": "M393A4K40EB3-CWE",
                "serial": f"S{i:07d}",
            }
            for i in range(1, 17)
        ],
    },
    "disks": [
        {
            "name": "nvme0n1",
            "path": "/dev/nvme0n1",
            "model": "Dell Ent NVMe P5600 MU U.2 1.6TB",
            "serial": "PHAB1234001",
            "size_bytes": 1_600_321_314_816,
            "transport": "nvme",
            "firmware": "1.1.4",
        },
        {
            "name": "nvme1n1",
            "path": "/dev/nvme1n1",
            "model": "Dell Ent NVMe P5600 MU U.2 1.6TB",
            "serial": "PHAB1234002",
            "size_bytes": 1_600_321_314_816,
            "transport": "nvme",
            "firmware": "1.1.4",
        },
        {
            "name": "sda",
            "path": "/dev/sda",
            "model": "MZ7L3480HBLT-00A07",
            "serial": "S6KMNE0T500123",
            "size_bytes": 480_103_981_056,
            "transport": "sata",
            "firmware": "JXTE104Q",
        },
    ],
    "nics": [
        {
            "name": "eno1",
            "mac": "b4:96:91:aa:bb:01",
            "driver": "ice",
            "speed_mbps": 25000,
            "max_speed_mbps": 25000,
            "link": "up",
            "pci_address": "0000:31:00.0",
            "firmware": "4.20 0x80017785",
        },
        {
            "name": "eno2",
            "mac": "b4:96:91:aa:bb:02",
            "driver": "ice",
            "speed_mbps": 10000,
            "max_speed_mbps": 25000,
            "link": "up",
            "pci_address": "0000:31:00.1",
            "firmware": "4.20 0x80017785",
        },
    ],
    "gpus": [],
    "bmc": {"manufacturer": "Dell Inc.", "firmware": "6.10.80.00", "ipmi_version": "2.0"},
    "unavailable": {"gpus": "no NVIDIA GPU found"},
}

THRESHOLDS = [
    ThresholdRule(
        id=1, stage="*", kind="temp", key="cpu*", op="lte", threshold=85, unit="°C", source="profile:deep"
    ),
    ThresholdRule(
        id=2,
        stage="*",
        kind="temp",
        key="inlet",
        op="lte",
        threshold=35,
        unit="°C",
        severity=Severity.warning,
    ),
    ThresholdRule(id=3, stage="*", kind="power", key="psu*", op="lte", threshold=800, unit="W"),
    ThresholdRule(
        id=4,
        stage="Storage",
        kind="throughput",
        key="nvme*",
        op="within_pct",
        threshold=10,
        nominal=3000,
        unit="MB/s",
        source="spec",
    ),
    ThresholdRule(
        id=5, stage="SMART", kind="smart", key="*/reallocated_sectors", op="delta_lte", threshold=0
    ),
    ThresholdRule(id=6, stage="Network", kind="link", key="*", op="regex", threshold="^up$"),
    ThresholdRule(id=7, stage="*", kind="fan", key="*", op="gte", threshold=1500, unit="RPM"),
]


def _series_plan(failed: bool) -> list[tuple[str, str, str, str, float, float]]:
    """(stage, kind, key, unit, base, amplitude) of the numeric sensor series."""
    plan = []
    for stage, load in (("CPUStress", 1.0), ("Memory", 0.6), ("Storage", 0.4), ("Burn", 1.1)):
        for cpu in ("cpu0", "cpu1"):
            plan.append((stage, "temp", cpu, "°C", 45 + 28 * load, 4))
        plan.append((stage, "temp", "inlet", "°C", 23, 1.5))
        plan.append((stage, "temp", "exhaust", "°C", 35 + 10 * load, 2))
        for psu in ("psu0", "psu1"):
            plan.append((stage, "power", psu, "W", 180 + 330 * load, 25))
        for fan in ("fan1", "fan2", "fan3", "fan4"):
            plan.append((stage, "fan", fan, "RPM", 6000 + 6000 * load, 400))
    for disk in ("nvme0n1", "nvme1n1"):
        plan.append(
            (
                "Storage",
                "throughput",
                disk,
                "MB/s",
                3100 if disk == "nvme0n1" else (2500 if failed else 3050),
                120,
            )
        )
        plan.append(("Storage", "temp", disk, "°C", 48, 3))
    plan.append(("Storage", "throughput", "sda", "MB/s", 520, 15))
    plan.append(("Network", "throughput", "eno1", "Gb/s", 23.4, 0.3))
    return plan


def demo_record(samples: int = 20_000, *, failed: bool = True, seed: int = 7) -> RunRecord:
    rng = random.Random(seed)
    stages: list[Stage] = []
    t = T0
    spans: dict[str, tuple[datetime, datetime]] = {}
    for name, ordinal, minutes in STAGES:
        end = t + timedelta(minutes=minutes)
        spans[name] = (t, end)
        verdict, reason = Verdict.passed, None
        if name == "GPU":
            verdict, reason = Verdict.skipped, "no NVIDIA GPU found"
        if failed and name == "SMART":
            verdict, reason = Verdict.failed, "nvme1n1: reallocated sectors grew by 12 during the stage"
        if failed and name == "Storage":
            verdict, reason = (
                Verdict.failed,
                "nvme1n1 sequential read 2,500 MB/s is more than 10 % below 3,000 MB/s",
            )
        stages.append(
            Stage(
                name=name,
                ordinal=ordinal,
                state=verdict,
                reason=reason,
                started_at=t,
                completed_at=end,
                summary={"minutes": minutes},
            )
        )
        t = end
    substeps = []
    for i, disk in enumerate(("nvme0n1", "nvme1n1", "sda")):
        bad = failed and disk == "nvme1n1"
        s, e = spans["Storage"]
        substeps.append(
            SubStep(
                stage_name="Storage",
                ordinal=i,
                name=disk,
                state=Verdict.failed if bad else Verdict.passed,
                reason="read 2,500 MB/s < 2,700 MB/s" if bad else None,
                started_at=s + (e - s) * i / 3,
                completed_at=s + (e - s) * (i + 1) / 3,
            )
        )
        substeps.append(
            SubStep(
                stage_name="SMART",
                ordinal=i,
                name=disk,
                state=Verdict.failed if bad else Verdict.passed,
                reason="reallocated_sectors 3 → 15" if bad else None,
                started_at=spans["SMART"][0],
                completed_at=spans["SMART"][1],
            )
        )

    plan = _series_plan(failed)
    per_series = max(3, samples // len(plan))
    measurements: list[Measurement] = []
    evaluations: list[ThresholdEvaluation] = []
    for stage, kind, key, unit, base, amp in plan:
        s, e = spans[stage]
        step = (e - s) / per_series
        warm = min(1.0, 40.0 / per_series)
        for i in range(per_series):
            ts = s + step * i
            x = i / per_series
            ramp = 1 - math.exp(-x / max(warm, 1e-3)) if kind in ("temp", "power") else 1.0
            v = base * (0.75 + 0.25 * ramp) + amp * math.sin(x * 40) + rng.gauss(0, amp * 0.3)
            if failed and stage == "Burn" and key == "cpu1" and 0.62 < x < 0.64:
                v += 16  # a thermal excursion: crosses the 85 °C limit for a while
            measurements.append(
                Measurement(ts=ts, stage=stage, kind=kind, key=key, value=round(v, 2), unit=unit)
            )
            if failed and stage == "Burn" and key == "cpu1" and v > 85:
                evaluations.append(
                    ThresholdEvaluation(
                        rule_id=1, stage=stage, kind=kind, key=key, ts=ts, observed=round(v, 2), passed=False
                    )
                )
            if kind == "throughput" and stage == "Storage" and key.startswith("nvme") and abs(v - 3000) > 300:
                evaluations.append(
                    ThresholdEvaluation(
                        rule_id=4, stage=stage, kind=kind, key=key, ts=ts, observed=round(v, 2), passed=False
                    )
                )
    s, e = spans["SMART"]
    for disk, before, after in (("nvme0n1", 0, 0), ("nvme1n1", 3, 15 if failed else 3), ("sda", 0, 0)):
        measurements.append(
            Measurement(ts=s, stage="SMART", kind="smart", key=f"{disk}/reallocated_sectors", value=before)
        )
        measurements.append(
            Measurement(ts=e, stage="SMART", kind="smart", key=f"{disk}/reallocated_sectors", value=after)
        )
        if after - before > 0:
            evaluations.append(
                ThresholdEvaluation(
                    rule_id=5,
                    stage="SMART",
                    kind="smart",
                    key=f"{disk}/reallocated_sectors",
                    ts=e,
                    observed=after - before,
                    passed=False,
                )
            )
    s, e = spans["Network"]
    for nic in ("eno1", "eno2"):
        measurements.append(Measurement(ts=s, stage="Network", kind="link", key=nic, value=None, text="up"))
    s, e = spans["Firmware"]
    measurements.append(
        Measurement(ts=s, stage="Firmware", kind="version", key="bios", value=None, text="1.10.2")
    )
    measurements.append(Measurement(ts=s, stage="Firmware", kind="sensor", key="garbage", value=float("nan")))

    run = Run(
        id=4217,
        host_id=7,
        state="Reporting",
        profile="deep",
        non_destructive=False,
        started_at=T0 - timedelta(minutes=4),
        completed_at=t,
        failed_stage="SMART" if failed else None,
        reason=stages[3].reason if failed else None,
        result=None,
    )
    return RunRecord(
        host=Host(
            id=7,
            name="web-07",
            mac="b4:96:91:aa:bb:01",
            boot_provider="ipmi",
            boot_config={"address": "10.0.0.7", "password": "never-in-a-report"},
            notes="rack B4, U12",
        ),
        run=run,
        stages=stages,
        substeps=substeps,
        measurements=measurements,
        thresholds=THRESHOLDS,
        evaluations=evaluations,
        spec_diffs=[
            SpecDiff(
                field="nics[eno2].speed_mbps",
                expected="25000",
                actual="10000",
                severity=Severity.warning,
                message="negotiated below capability",
            ),
            SpecDiff(
                field="memory.total_gib",
                expected="512",
                actual="512",
                severity=Severity.info,
                message="",
                ignored=True,
            ),
        ],
        firmware=[
            FirmwareSnapshot(component="bios", identifier="system", version="1.10.2", vendor="Dell Inc."),
            FirmwareSnapshot(component="bmc", identifier="idrac", version="6.10.80.00", vendor="Dell Inc."),
            FirmwareSnapshot(component="nic", identifier="eno1", version="4.20 0x80017785", vendor="Intel"),
            FirmwareSnapshot(component="nvme_fw", identifier="nvme0n1", version="1.1.4"),
        ],
        artifacts=[
            Artifact(
                kind="fio",
                path="/var/lib/vetting/runs/4217/fio-nvme1n1.json",
                stage="Storage",
                sha256="9f2c1d0e5b7a4c3e8d6f0a1b2c3d4e5f60718293a4b5c6d7e8f9001122334455",
                size_bytes=48213,
            ),
            Artifact(
                kind="smartctl",
                path="/var/lib/vetting/runs/4217/smart-nvme1n1.json",
                stage="SMART",
                sha256="0a1b2c3d4e5f60718293a4b5c6d7e8f9001122334455667788990aabbccddeef",
                size_bytes=9120,
            ),
            Artifact(
                kind="inventory",
                path="/var/lib/vetting/runs/4217/inventory.json",
                stage=None,
                sha256="1111111111111111111111111111111111111111111111111111111111111111",
                size_bytes=30211,
            ),
        ],
        inventory=INVENTORY,
        events=[
            Event(
                ts=T0 - timedelta(minutes=5),
                kind="run.started",
                message="deep run started",
                actor="alice",
                run_id=4217,
            ),
            Event(
                ts=spans["SMART"][1],
                kind="notification",
                level="warning" if failed else "info",
                message="StageFailed notification to oncall (ntfy) delivered"
                if failed
                else "no notification",
                run_id=4217,
            ),
        ],
    )


def main(argv: list[str] | None = None) -> int:
    from .write import write_reports

    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m vetting_reports.demo OUT_DIR [SAMPLES] [--passed]", file=sys.stderr)
        return 2
    samples = int(args[1]) if len(args) > 1 and args[1].isdigit() else 20_000
    paths = write_reports(demo_record(samples, failed="--passed" not in args), None, args[0])
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
