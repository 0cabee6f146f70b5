"""PSU: power-supply status and redundancy from the BMC, rail voltages from the BMC,
lm-sensors or hwmon sysfs.

Sources, all that are available are used:

1. ``ipmitool`` — in-band when ``/dev/ipmi0`` exists, or out-of-band with
   ``params.ipmi = {host, port, user, password, interface, cipher}``:
   ``sdr type "Power Supply"`` (status, redundancy; compact records included) and
   ``sdr elist full`` (voltages).
2. ``sensors -j`` (lm-sensors), else ``sensors`` text on old versions.
3. ``/sys/class/hwmon/*/in*_input`` (mV) when lm-sensors found nothing.

``params.sources`` restricts the list (e.g. ``["ipmi"]`` for a BMC-only check).

A PSU reporting failure, lost AC, predictive failure or lost redundancy fails the
stage; so does a rail outside ``tolerance_pct`` of its nominal (+12 V, +5 V,
+3.3 V, -12 V, 5VSB, 3VSB; the CMOS battery against a floor). With no source at all
the stage is skipped with the reasons.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vetting_core.context import StageContext, StageFailed, StageSkipped
from vetting_core.model import Severity, ThresholdRule
from vetting_core.records import StageSpec
from vetting_core.tools import ToolNotFound

from . import ipmi, sensors
from .rails import RailReading, classify


async def _ipmi(ctx: StageContext, why: list[str]) -> tuple[list[ipmi.SdrRecord], list[ipmi.SdrRecord]] | None:
    iface = ctx.params.get("ipmi")
    if not iface and not any(Path(p).exists() for p in ("/dev/ipmi0", "/dev/ipmi/0", "/dev/ipmidev/0")):
        why.append("no BMC (no /dev/ipmi0 and no params.ipmi)")
        return None
    timeout = float(ctx.params.get("ipmi_timeout_s", 60))
    try:
        psu = await ctx.run_tool(ipmi.sdr_argv("power_supply", interface=iface), timeout=timeout, artifact="ipmi-sdr-psu")
        if psu.returncode != 0 and not psu.stdout.strip():
            err = (psu.stderr or "no output").strip()[:200]
            if iface:  # an operator asked for this BMC: unreachable is a failure, not a skip
                raise StageFailed(f"BMC {iface.get('host')} unreachable: {err}")
            why.append(f"ipmitool failed: {err}")
            return None
        volts = await ctx.run_tool(ipmi.sdr_argv("elist", interface=iface), timeout=timeout, artifact="ipmi-sdr-elist")
    except ToolNotFound:
        why.append("ipmitool is not installed")
        return None
    return ipmi.parse_sdr(psu.stdout), ipmi.parse_sdr(volts.stdout)


async def _lm_sensors(ctx: StageContext, why: list[str]) -> list[tuple[str, str, float]]:
    try:
        res = await ctx.run_tool(["sensors", "-j"], timeout=30)
    except ToolNotFound:
        why.append("lm-sensors is not installed")
        return []
    if res.returncode == 0:
        try:
            return sensors.parse_json(res.stdout)
        except sensors.SensorsParseError:
            res = await ctx.run_tool(["sensors"], timeout=30)  # lm-sensors < 3.5 has no -j
            return sensors.parse_text(res.stdout)
    why.append(f"sensors: {(res.stderr or res.stdout).strip().splitlines()[0] if (res.stderr or res.stdout).strip() else 'failed'}")
    return []


async def run(ctx: StageContext) -> None:
    p = ctx.params
    why: list[str] = []
    problems: list[str] = []
    readings: list[RailReading] = []
    psu_records: list[ipmi.SdrRecord] = []

    sources = set(p.get("sources") or ("ipmi", "sensors", "hwmon"))
    got = await _ipmi(ctx, why) if "ipmi" in sources else None
    if got is not None:
        psu_part, elist = got
        seen = set()
        for rec in psu_part + [r for r in elist if r.is_psu]:
            if rec.name in seen:
                continue
            seen.add(rec.name)
            psu_records.append(rec)
        for rec in ipmi.voltage_records(elist):
            ctx.measure("voltage", f"ipmi:{rec.name}", rec.value, "V")
            rail = classify(rec.name)
            if rail:
                readings.append(RailReading("ipmi", rec.name, rec.value, rail))
        for rec in elist:
            unit = (rec.unit or "").lower()
            if rec.value is not None and unit.startswith("watt") and rec.is_psu is False:
                ctx.measure("psu_power", f"ipmi:{rec.name}", rec.value, "W")
            elif rec.value is not None and unit.startswith("amp"):
                ctx.measure("psu_current", f"ipmi:{rec.name}", rec.value, "A")

    triples = await _lm_sensors(ctx, why) if "sensors" in sources else []
    source = "sensors"
    if not triples and "hwmon" in sources:
        triples = sensors.read_hwmon(p.get("hwmon_root", "/sys/class/hwmon"))
        source = "hwmon"
        if not triples:
            why.append("no voltage inputs under /sys/class/hwmon")
    for chip, label, volts in triples:
        ctx.measure("voltage", f"{source}:{chip}/{label}", volts, "V")
        rail = classify(label)
        if rail:
            readings.append(RailReading(source, f"{chip}/{label}" if chip else label, volts, rail))

    if not psu_records and not readings:
        raise StageSkipped("no PSU telemetry: " + "; ".join(why))

    statuses: dict[str, Any] = {}
    for rec in psu_records:
        issues = rec.problems()
        ctx.measure("psu_status", rec.name, 0.0 if issues else 1.0, "ok", text=rec.reading or rec.status)
        statuses[rec.name] = {"status": rec.status, "reading": rec.reading, "ok": not issues}
        problems += issues
    tolerance = p.get("tolerance_pct")
    rails: dict[str, Any] = {}
    for r in readings:
        ctx.measure("psu_rail", r.key, r.volts, "V")
        issue = r.problem(None if tolerance is None else float(tolerance))
        rails[r.key] = {"volts": r.volts, "nominal": r.rail.nominal, "ok": issue is None}
        if issue:
            problems.append(issue)
    expected = p.get("expected_psus")
    present = [s for s in psu_records if any("presence detected" in st.lower() for st in s.states)]
    if expected and len(present) < int(expected):
        problems.append(f"{len(present)} PSU(s) present, {expected} expected")
    ctx.summary.update(psu=statuses, rails=rails, sources_missing=why)
    if problems:
        raise StageFailed("; ".join(problems))


def _rail_rules() -> tuple[ThresholdRule, ...]:
    rules = []
    for rail, nominal, tol in (("+12V", 12.0, 5.0), ("+5V", 5.0, 5.0), ("+3.3V", 3.3, 5.0),
                               ("-12V", -12.0, 10.0), ("5VSB", 5.0, 5.0), ("3VSB", 3.3, 5.0)):
        rules.append(ThresholdRule(kind="psu_rail", key=f"{rail}/*", op="within_pct", threshold=tol,
                                   nominal=nominal, unit="V"))
    rules.append(ThresholdRule(kind="psu_rail", key="VBAT/*", op="gte", threshold=2.8, unit="V",
                               severity=Severity.warning))
    rules.append(ThresholdRule(kind="psu_status", key="*", op="gte", threshold=1.0, unit="ok"))
    return tuple(rules)


STAGE = StageSpec(
    name="PSU",
    run=run,
    order=800,
    description="PSU status/redundancy via ipmitool; rails via ipmitool, sensors -j or hwmon, within_pct of nominal.",
    params={"*": {"ipmi": None, "tolerance_pct": None, "expected_psus": None,
                  "sources": ["ipmi", "sensors", "hwmon"]}},
    thresholds=_rail_rules(),
    timeout_s=600.0,
)
