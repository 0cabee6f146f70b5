"""Storage stage (entry point ``storage``, order 500) with the seed's safety gates.

Gates 1 (MAC allowlist) and 2 (per-run token) are the orchestrator's; this stage
enforces the two that concern disks, in this order, before any write:

3. **Device allowlist** — only whole disks matching the expected spec's ``disks``
   entries are written; USB/removable disks, surprise disks and disks with a mounted
   partition are listed in the summary and skipped (read-only runs read any fixed
   disk, mounted or not, and still skip USB sticks). Without spec disks a destructive
   run is refused.
4. **Wipe probe** — ``blkid -p``, ``wipefs --no-act`` and ``lsblk`` on every target
   and its partitions; any filesystem, LVM, RAID or partition-table signature stops
   the stage with :class:`StageHold` listing what was found, until the operator
   re-runs it with ``override_flags["wipe"]``.

``non_destructive`` runs skip both (they never write): fio sequential and random
*read* jobs with ``--readonly``. Destructive runs add fio write jobs with crc32c
verification and, when ``params["badblocks"]`` is set (deep/soak), ``badblocks -w``
judged by its summary line (it exits 0 with bad blocks).

Measurements (kind ``fio``, key ``<disk>/<job>/<metric>``) are judged here against
the spec's nominal MB/s / IOPS for the disk model (``gte`` the nominal minus its
tolerance) and streamed for the server's own rules; SMART counters are sampled before
and after the disk work (kind ``smart_attr``) so their deltas are judged too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec

from vetting_core import hookimpl
from vetting_core.context import StageContext, StageFailed, StageHold, StageSkipped
from vetting_core.inventory import Disk
from vetting_core.model import Measurement, ThresholdRule, Verdict
from vetting_core.records import StageSpec
from vetting_core.specdiff import ExpectedSpec, SpecError, disk_matches, spec_from_dict
from vetting_core.thresholds import BUILTIN_OPERATORS, ThresholdEngine

from .._common import safe_name
from ..smart import delta_rules, read_smart, record_counters
from .tools import (
    badblocks_argv,
    blkid_argv,
    fio_argv,
    fio_failure,
    lsblk_children_argv,
    parse_badblocks,
    parse_blkid_export,
    parse_fio_json,
    parse_lsblk_tree,
    parse_wipefs_json,
    signature_findings,
    wipefs_argv,
)

__all__ = ["STORAGE_STAGE", "select_targets", "wipe_probe"]

_VIRTUAL = ("zram", "ram", "sr", "dm-", "md", "nbd")


def _mounted_devices() -> set[str]:
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return set()
    return {os.path.realpath(line.split()[0]) for line in lines if line.startswith("/dev/")}


def select_targets(
    disks: list[dict[str, Any]],
    spec: ExpectedSpec | None,
    *,
    destructive: bool,
    devices: list[str] | None = None,
    mounted: set[str] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Gate 3, the device allowlist. Returns ``(targets, skipped)`` where each skipped
    entry says why. ``devices`` (params) narrows the candidates to those paths."""
    mounted = mounted if mounted is not None else _mounted_devices()
    targets, skipped = [], []
    wanted = set(devices or [])
    for d in disks:
        path, name = d.get("path", ""), d.get("name", "")
        if wanted and path not in wanted:
            continue
        if not wanted and (name.startswith(_VIRTUAL) or d.get("transport") == "loop"):
            continue  # not a disk at all
        why = None
        if d.get("removable") or d.get("transport") == "usb":
            why = "removable/USB disk"
        elif destructive and any(m == path or (m.startswith(path) and m[len(path):].lstrip("p").isdigit()) for m in mounted):
            why = "disk or one of its partitions is mounted"
        elif destructive:
            if spec is None or not spec.disks:
                why = "no expected-spec disks to allow it"
            else:
                disk = msgspec.convert({k: v for k, v in d.items() if k in Disk.__struct_fields__}, Disk)
                if not any(disk_matches(entry, disk) for entry in spec.disks):
                    why = "surprise disk: matches no expected-spec disk"
        if why:
            skipped.append({"device": path, "model": d.get("model", ""), "reason": why})
        else:
            targets.append(d)
    for path in sorted(wanted - {d.get("path") for d in disks}):
        skipped.append({"device": path, "model": "", "reason": "not in the inventory"})
    return targets, skipped


async def wipe_probe(ctx: StageContext, path: str) -> list[dict[str, str]]:
    """Gate 4: signatures on the disk and on every partition/volume below it."""
    devices = [path]
    tree = await ctx.run_tool(lsblk_children_argv(path), timeout=30)
    children: list[dict[str, Any]] = []
    if tree.returncode == 0:
        try:
            children = parse_lsblk_tree(tree.stdout)
        except ValueError:
            children = []
    devices += [c["path"] for c in children if c.get("path")]
    found: list[dict[str, str]] = []
    for dev in devices:
        b = await ctx.run_tool(blkid_argv(dev), timeout=30)
        w = await ctx.run_tool(wipefs_argv(dev), timeout=30)
        if b.returncode not in (0, 2) and w.returncode != 0:
            # neither tool could read it: treat as "cannot prove it is empty"
            found.append({"device": dev, "kind": "unreadable", "type": "", "source": "blkid/wipefs",
                          "detail": (b.stderr or w.stderr).strip()[:200]})
            continue
        try:
            sigs = parse_wipefs_json(w.stdout) if w.returncode == 0 else []
        except ValueError:
            sigs = []
        found += signature_findings(dev, parse_blkid_export(b.stdout, b.returncode), sigs)
    for c in children:
        if c.get("type") in ("lvm", "raid0", "raid1", "raid5", "raid6", "raid10", "crypt") and not any(f["device"] == c["path"] for f in found):
            found.append({"device": c["path"], "kind": c["type"], "type": c.get("fstype") or "", "source": "lsblk", "detail": ""})
    return found


def nominal_rules(disk: str, entry: Any) -> list[ThresholdRule]:
    """Rules from a spec disk entry: throughput and IOPS at least nominal − tolerance
    (``gte``), random 4 KiB p99 latency at most nominal + tolerance (``lte``)."""
    rules = []
    tol = entry.tolerance_pct
    for job, metric, nominal in (("seqread", "read_mbps", entry.read_mbps), ("seqwrite_verify", "write_mbps", entry.write_mbps),
                                 ("randread", "read_iops", entry.read_iops), ("randwrite_verify", "write_iops", entry.write_iops)):
        if nominal:
            rules.append(ThresholdRule(stage="Storage", kind="fio", key=f"{disk}/{job}/{metric}", op="gte",
                                       threshold=nominal * (1 - tol / 100), nominal=nominal, source="spec"))
    for job, metric, ceiling in (("randread", "read_clat_p99_us", entry.read_p99_us),
                                 ("randwrite_verify", "write_clat_p99_us", entry.write_p99_us)):
        if ceiling:
            rules.append(ThresholdRule(stage="Storage", kind="fio", key=f"{disk}/{job}/{metric}", op="lte",
                                       threshold=ceiling * (1 + tol / 100), nominal=ceiling, unit="us", source="spec"))
    return rules


def _job_size(p: dict[str, Any], job: str) -> Any:
    """Bytes a job covers: reads ``read_size`` (None: the whole disk, time-bounded),
    writes ``verify_size``; the random 4 KiB write has its own ``rand_verify_size``
    (an HDD does ~200 random IOPS: 8 GiB of them would take 3 hours)."""
    if job == "randwrite_verify":
        return p.get("rand_verify_size") or p.get("verify_size")
    return p.get("verify_size" if "verify" in job else "read_size")


async def _fio(ctx: StageContext, name: str, path: str, job: str, step, samples: list[Measurement]) -> dict[str, Any] | None:
    argv = fio_argv(path, job, runtime_s=int(ctx.params.get("runtime_s", 10)), size=_job_size(ctx.params, job),
                    direct=bool(ctx.params.get("direct", True)), ioengine=str(ctx.params.get("ioengine", "libaio")))
    res = await ctx.run_tool(argv, timeout=float(ctx.params.get("fio_timeout_s", 3600)))
    ctx.save_text("fio", f"fio-{safe_name(name)}-{job}.json", res.stdout)
    try:
        parsed = parse_fio_json(res.stdout)
    except ValueError as exc:
        parsed = None
        ctx.log(f"{path} {job}: {exc}", level="error")
    why = fio_failure(res.stdout, res.stderr, parsed) if not res.timed_out else "fio timed out"
    if parsed:
        for metric, value in parsed["metrics"].items():
            if metric.endswith("_bytes"):
                continue
            unit = "MB/s" if metric.endswith("mbps") else "IOPS" if metric.endswith("iops") else "us"
            samples.append(ctx.measure("fio", f"{name}/{job}/{metric}", value, unit))
        step.summary.setdefault("fio", {})[job] = {k: round(v, 2) for k, v in parsed["metrics"].items()}
    if why:
        _fail(step, f"{job}: {why}")
    return parsed


def refused_open(path: str) -> str | None:
    """Why this process may not read ``path`` at all, or None.

    A container or a sandbox denies device access (EPERM/EACCES) however healthy the
    disk is: that is a setup limit, reported as a skip with the reason, not a disk
    failure. Any other error on open (EIO, ENXIO) is left to fio and fails the disk.
    Opening read-only writes nothing, whatever the gates say.
    """
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
    except PermissionError as exc:
        return f"cannot open {path} for reading: {exc.strerror} (the agent needs root and access to the device)"
    except OSError:
        pass
    return None


def _fail(step, message: str) -> None:
    """Fail a sub-step, keeping earlier reasons (two jobs may fail on one disk)."""
    previous = step.step.reason if step.step.state is Verdict.failed else None
    step.fail(f"{previous}; {message}" if previous else message)


async def run(ctx: StageContext) -> None:
    destructive = not ctx.non_destructive
    spec: ExpectedSpec | None = None
    if ctx.spec:
        try:
            spec = spec_from_dict(ctx.spec)
        except SpecError as exc:
            raise StageFailed(f"expected spec is invalid: {exc}") from None
    disks = list(ctx.inventory.get("disks") or [])
    targets, skipped = select_targets(disks, spec, destructive=destructive, devices=ctx.params.get("devices"))
    ctx.summary.update(mode="destructive" if destructive else "read-only", skipped=skipped, targets=[t["path"] for t in targets])
    for s in skipped:
        ctx.log(f"skipping {s['device']} ({s['model'] or 'no model'}): {s['reason']}", level="warning")
    if not targets:
        if destructive and (spec is None or not spec.disks):
            raise StageFailed("destructive storage test refused: the expected spec lists no disks (device allowlist is empty)")
        raise StageSkipped("no disk passed the device allowlist")

    if destructive:
        findings = {t["path"]: await wipe_probe(ctx, t["path"]) for t in targets}
        findings = {k: v for k, v in findings.items() if v}
        ctx.summary["wipe_probe"] = findings
        if findings and not ctx.override_flags.get("wipe"):
            lines = [f"{f['device']}: {f['kind']} {f['type']}".strip() for v in findings.values() for f in v]
            raise StageHold(f"wipe probe found data on {len(findings)} disk(s): " + "; ".join(lines[:10]), found=findings)
        if findings:
            ctx.log("wipe probe found data but the operator overrode it: proceeding", level="warning")

    rules: list[ThresholdRule] = []
    samples: list[Measurement] = []
    jobs = ["seqread", "randread"] + (["seqwrite_verify", "randwrite_verify"] if destructive and ctx.params.get("fio_write", True) else [])
    unopenable = 0
    for i, disk in enumerate(targets):
        name, path = disk.get("name") or safe_name(disk["path"]), disk["path"]
        async with ctx.substep(name) as step:
            why = refused_open(path)
            if why:
                unopenable += 1
                step.skip(why)
                ctx.log(f"skipping {path}: {why}", level="warning")
                continue
            entry = None
            if spec is not None:
                d = msgspec.convert({k: v for k, v in disk.items() if k in Disk.__struct_fields__}, Disk)
                entry = next((e for e in spec.disks if disk_matches(e, d)), None)
            if entry is not None:
                rules += nominal_rules(name, entry)
            smart_before, _ = await read_smart(ctx, path) if ctx.params.get("smart", True) else ({"verdict": "skipped"}, "")
            if smart_before.get("verdict") in ("passed", "failed"):
                record_counters(ctx, name, smart_before)
            for j, job in enumerate(jobs):
                ctx.progress((i + j / (len(jobs) + 1)) / len(targets), f"{path}: fio {job}")
                await _fio(ctx, name, path, job, step, samples)
            if destructive and ctx.params.get("badblocks"):
                ctx.progress(None, f"{path}: badblocks -w")
                res = await ctx.run_tool(badblocks_argv(path, patterns=ctx.params.get("badblocks_patterns")),
                                         timeout=float(ctx.params.get("badblocks_timeout_s", 48 * 3600)))
                bb = parse_badblocks(res.stdout, res.stderr)
                step.summary["badblocks"] = bb
                ctx.measure("badblocks", f"{name}/bad_blocks", bb["bad_blocks"])
                if not bb["completed"]:
                    _fail(step, f"badblocks did not complete: {bb.get('error')}")
                elif bb["bad_blocks"]:
                    _fail(step, f"badblocks found {bb['bad_blocks']} bad blocks ({bb['read_errors']}/{bb['write_errors']}/{bb['corruption_errors']} read/write/corruption errors)")
            if smart_before.get("verdict") in ("passed", "failed"):
                after, _ = await read_smart(ctx, path)
                record_counters(ctx, name, after)
    if unopenable == len(targets):
        raise StageSkipped(f"no disk could be opened for reading ({unopenable} skipped)")
    if rules:
        engine = ThresholdEngine(rules, {op.name: op for op in BUILTIN_OPERATORS})
        breaches = engine.evaluate(samples).breaches
        ctx.summary["nominal_rules"] = [msgspec.to_builtins(r) for r in rules]
        for b in breaches:
            rule, sample = engine.rules[b.rule], samples[b.sample]
            disk = sample.key.split("/", 1)[0]
            side = "above" if rule.op == "lte" else "below"
            sign = "+" if rule.op == "lte" else "−"
            msg = f"{sample.key} = {b.observed:.1f}, {side} {rule.threshold:.1f} (nominal {rule.nominal:g} {sign} tolerance)"
            ctx.log(msg, level="error")
            for s in ctx.substeps:
                if s.name == disk and s.state is not Verdict.failed:
                    s.state, s.reason = Verdict.failed, msg


STORAGE_STAGE = StageSpec(
    name="Storage",
    run=run,
    order=500,
    destructive=True,
    description="fio read (and, when destructive, crc32c-verified write) per allowed disk; badblocks -w in deep/soak.",
    params={
        "*": {"runtime_s": 10, "read_size": None, "verify_size": "1G", "rand_verify_size": "256M", "direct": True,
              "ioengine": "libaio", "smart": True},
        "quick": {"badblocks": False},
        # deep's 2 hours hold a bounded verified write per disk, not a full-surface test
        # (badblocks -w on a 4 TB HDD alone takes ~11 h): that is soak's
        "deep": {"runtime_s": 60, "verify_size": "8G", "badblocks": False},
        "soak": {"runtime_s": 300, "verify_size": "100%", "rand_verify_size": "8G", "badblocks": True,
                 "badblocks_patterns": ["0xaa"]},
    },
    thresholds=delta_rules("Storage"),
    timeout_s=72 * 3600,
)


@hookimpl
def vetting_stages():
    return [STORAGE_STAGE]
