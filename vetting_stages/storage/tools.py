"""Tool wrappers of the Storage stage: argv builders and pure parsers for blkid,
wipefs, lsblk (children), fio and badblocks. Tested on real output under
``tests/fixtures/{blkid,wipefs,fio,badblocks}/<version>/`` and by running the real
tools against loop devices."""

from __future__ import annotations

import re
from typing import Any

from .._common import loads_json

# -- wipe probe ------------------------------------------------------------------------


def blkid_argv(dev: str) -> list[str]:
    # -p: low-level probe of the device itself (no udev cache, no blkid.tab)
    return ["blkid", "-p", "-o", "export", dev]


def parse_blkid_export(text: str, returncode: int | None) -> dict[str, str]:
    """``blkid -p -o export`` → {KEY: value}. Exit 2 means "no signature found"."""
    if returncode == 2:
        return {}
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            out[key.strip()] = value.replace("\\ ", " ").strip()
    return out


def wipefs_argv(dev: str) -> list[str]:
    # --no-act: only list signatures; never erase anything
    return ["wipefs", "--no-act", "-J", dev]


def parse_wipefs_json(text: str) -> list[dict[str, Any]]:
    """``wipefs --no-act -J`` → [{device, offset, type, uuid, label}]; empty output
    (older util-linux prints nothing when there is no signature) → []."""
    if not text.strip():
        return []
    doc = loads_json(text, "wipefs -J")
    return [dict(s) for s in doc.get("signatures", [])]


def lsblk_children_argv(dev: str) -> list[str]:
    return ["lsblk", "-J", "-b", "-o", "NAME,PATH,TYPE,FSTYPE,PTTYPE,MOUNTPOINT", dev]


def parse_lsblk_tree(text: str) -> list[dict[str, Any]]:
    """Flatten ``lsblk -J`` children (partitions, LVM volumes, RAID members) of a disk."""
    doc = loads_json(text, "lsblk -J")
    out: list[dict[str, Any]] = []

    def walk(nodes: list[dict[str, Any]], depth: int) -> None:
        for n in nodes:
            if depth > 0:
                out.append({k: n.get(k) for k in ("name", "path", "type", "fstype", "pttype", "mountpoint")})
            walk(n.get("children") or [], depth + 1)

    walk(doc.get("blockdevices", []), 0)
    return out


def signature_findings(dev: str, blkid: dict[str, str], wipefs: list[dict[str, Any]]) -> list[dict[str, str]]:
    """What on ``dev`` says "someone's data lives here" — one entry per signature."""
    found: dict[tuple[str, str], dict[str, str]] = {}
    if blkid.get("PTTYPE"):
        found[("partition_table", blkid["PTTYPE"])] = {"device": dev, "kind": "partition_table", "type": blkid["PTTYPE"], "source": "blkid"}
    if blkid.get("TYPE"):
        usage = blkid.get("USAGE", "filesystem")
        kind = {"raid": "raid_or_lvm", "crypto": "encrypted", "filesystem": "filesystem", "other": "other"}.get(usage, usage)
        if blkid["TYPE"] == "LVM2_member":
            kind = "lvm"
        elif blkid["TYPE"].endswith("raid_member") or blkid["TYPE"] == "zfs_member":
            kind = "raid"
        detail = " ".join(f"{k}={blkid[k]}" for k in ("LABEL", "UUID") if blkid.get(k))
        found[(kind, blkid["TYPE"])] = {"device": dev, "kind": kind, "type": blkid["TYPE"], "source": "blkid", "detail": detail}
    for sig in wipefs:
        t = str(sig.get("type") or "")
        if not t or any(f["type"].lower() == t.lower() for f in found.values()):
            continue
        kind = "partition_table" if t.lower() in ("gpt", "pmbr", "dos", "mbr") else "signature"
        if t.lower() == "pmbr" and ("partition_table", "gpt") in found:
            continue  # the protective MBR of a GPT disk says nothing new
        found[(kind, t)] = {"device": dev, "kind": kind, "type": t, "source": "wipefs", "detail": f"offset {sig.get('offset')}"}
    return list(found.values())


# -- fio -------------------------------------------------------------------------------

READ_JOBS = {
    "seqread": ["--rw=read", "--bs=1M", "--iodepth=32"],
    "randread": ["--rw=randread", "--bs=4k", "--iodepth=64"],
}
WRITE_JOBS = {
    "seqwrite_verify": ["--rw=write", "--bs=1M", "--iodepth=32", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0"],
    "randwrite_verify": ["--rw=randwrite", "--bs=4k", "--iodepth=32", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0"],
}


def fio_argv(
    target: str,
    job: str,
    *,
    runtime_s: int | None = 10,
    size: str | None = None,
    direct: bool = True,
    ioengine: str = "libaio",
) -> list[str]:
    """One fio job with JSON output. Read jobs always carry ``--readonly`` (fio then
    refuses to issue any write); verify jobs run by size, not by time (fio only
    verifies what a finished write phase wrote)."""
    if job in READ_JOBS:
        opts = READ_JOBS[job]
        safety = ["--readonly"]
    elif job in WRITE_JOBS:
        opts = WRITE_JOBS[job]
        safety = []
        runtime_s = None
    else:
        raise ValueError(f"unknown fio job {job!r} (known: {', '.join([*READ_JOBS, *WRITE_JOBS])})")
    argv = ["fio", f"--name={job}", f"--filename={target}", *safety, *opts, f"--ioengine={ioengine}",
            f"--direct={int(direct)}", "--output-format=json", "--group_reporting"]
    if size:
        argv.append(f"--size={size}")
    if runtime_s:
        argv += [f"--runtime={runtime_s}", "--time_based"]
    return argv


def _pct(clat: dict[str, Any], p: str) -> float | None:
    pcts = (clat or {}).get("percentile") or {}
    for key, value in pcts.items():
        if abs(float(key) - float(p)) < 1e-6:
            return value / 1000.0  # ns → µs
    return None


def parse_fio_json(text: str) -> dict[str, Any]:
    """fio ``--output-format=json`` → metrics of the (single, grouped) job.

    fio may print warnings before the JSON document; they are skipped and returned
    in ``notes``. ``error`` is fio's per-job errno (84 = EILSEQ on a verify failure,
    5 = EIO); a non-zero value fails the job whatever the exit code says."""
    start = text.find("{")
    if start < 0:
        raise ValueError(f"fio printed no JSON: {text.strip()[:200] or '<empty>'}")
    notes = [line for line in text[:start].splitlines() if line.strip()]
    doc = loads_json(text[start:], "fio")
    jobs = doc.get("jobs") or []
    if not jobs:
        raise ValueError("fio JSON has no jobs")
    job = jobs[0]
    out: dict[str, Any] = {"job": job.get("jobname", ""), "error": int(job.get("error", 0) or 0), "notes": notes, "metrics": {}}
    m = out["metrics"]
    for direction in ("read", "write"):
        d = job.get(direction) or {}
        if not d.get("io_bytes"):
            continue
        m[f"{direction}_mbps"] = d.get("bw_bytes", d.get("bw", 0) * 1024) / 1e6
        m[f"{direction}_iops"] = d.get("iops", 0.0)
        clat = d.get("clat_ns") or {}
        for p, name in (("50", "p50"), ("99", "p99"), ("99.9", "p999")):
            v = _pct(clat, p)
            if v is not None:
                m[f"{direction}_clat_{name}_us"] = v
        m[f"{direction}_bytes"] = d["io_bytes"]
    return out


def fio_failure(result_text: str, stderr: str, parsed: dict[str, Any] | None) -> str | None:
    """Why a fio run failed: a job errno, a verify complaint on stderr, or no JSON."""
    verify = [line.strip() for line in stderr.splitlines() if "verify" in line.lower() or "error" in line.lower()]
    if parsed is None:
        return "fio produced no parseable result" + (f": {verify[0]}" if verify else "")
    if parsed["error"]:
        return f"fio job {parsed['job']} error {parsed['error']}" + (f": {verify[0]}" if verify else "")
    bad = [v for v in verify if "bad" in v.lower() or "fail" in v.lower() or "mismatch" in v.lower()]
    if bad:
        return f"fio verify: {bad[0]}"
    return None


# -- badblocks -------------------------------------------------------------------------


def badblocks_argv(dev: str, *, block_size: int = 4096, patterns: list[str] | None = None, last_block: int | None = None) -> list[str]:
    """``badblocks -w`` (destructive write-mode). ``patterns`` (e.g. ``["0xaa"]``)
    shortens the default four-pattern pass."""
    argv = ["badblocks", "-w", "-s", "-v", "-b", str(block_size)]
    for p in patterns or []:
        argv += ["-t", p]
    argv.append(dev)
    if last_block is not None:
        argv.append(str(last_block))
    return argv


_PASS = re.compile(r"Pass completed, (\d+) bad blocks found\. \((\d+)/(\d+)/(\d+) errors\)")


def parse_badblocks(stdout: str, stderr: str) -> dict[str, Any]:
    """badblocks prints bad block numbers on stdout and its summary on stderr, and
    exits 0 either way: the verdict is the ``Pass completed, N bad blocks found``
    line. A run without that line did not complete (killed, I/O error on open)."""
    text = stderr.replace("\r", "\n").replace("\b", "")
    m = None
    for m in _PASS.finditer(text):
        pass
    blocks = [int(x) for x in re.findall(r"^\s*(\d+)\s*$", stdout, re.M)]
    if m is None:
        tail = [line.strip() for line in text.splitlines() if line.strip()][-2:]
        return {"completed": False, "bad_blocks": len(blocks), "blocks": blocks[:100], "error": "; ".join(tail) or "no summary line"}
    return {
        "completed": True,
        "bad_blocks": int(m.group(1)),
        "read_errors": int(m.group(2)),
        "write_errors": int(m.group(3)),
        "corruption_errors": int(m.group(4)),
        "blocks": blocks[:100],
    }
