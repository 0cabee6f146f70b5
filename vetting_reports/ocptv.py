"""OCP Test & Validation 2.0 output (JSONL) for a run.

Mapping (documented in ``docs/report-schema.md``):

- ``schemaVersion`` 2.0, then ``testRunStart`` with ``dutInfo`` built from the host and
  the inventory (platform, CPUs, DIMMs, disks, NICs, GPUs as ``hardwareInfos``; the
  firmware snapshot as ``softwareInfos``);
- one test step per stage: ``testStepStart``; per measurement series the ``min`` and
  ``max`` as two ``measurement`` artifacts carrying every numeric threshold rule that
  applies as ``validators`` (for the built-in operators every sample is in bounds
  exactly when both extremes are, because the bounds are intervals; ``within_pct`` is
  the pair ``≥ nominal − tol`` / ``≤ nominal + tol``; ``delta_lte`` judges a ``delta``
  measurement, last − first); textual series give their last text with ``EQUAL``/
  ``NOT_EQUAL``/``REGEX_MATCH`` validators; a ``log`` per threshold breach and spec
  difference; ``file`` per artifact (with its SHA-256 in ``metadata``); ``diagnosis``
  per sub-step and per stage verdict; ``error`` for a stage that never finished, and
  instead of a diagnosis for a stage that could not run here (symptom
  ``cannot-run-tool-missing``/``-no-permission``/``-unsupported``, step status ``ERROR``);
  ``testStepEnd``;
- run-level ``log`` lines for the run's events, an ``error`` when the run failed
  outside any stage, and ``testRunEnd``.

Samples themselves are not exported one by one: a run may hold millions.
"""

from __future__ import annotations

import json
import mimetypes
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote

import vetting_core
from vetting_core.model import RunRecord, ThresholdRule

from . import series as series_mod
from .build import _breaches, describe_rule, rules_for, run_verdict
from .timefmt import iso

NUMERIC_VALIDATOR = {
    "lt": "LESS_THAN",
    "lte": "LESS_THAN_OR_EQUAL",
    "gt": "GREATER_THAN",
    "gte": "GREATER_THAN_OR_EQUAL",
}
TEXT_VALIDATOR = {"eq": "EQUAL", "ne": "NOT_EQUAL", "regex": "REGEX_MATCH"}
STEP_STATUS = {"passed": "COMPLETE", "failed": "COMPLETE", "skipped": "SKIP", "cannot_run": "ERROR"}
DIAGNOSIS_TYPE = {"passed": "PASS", "failed": "FAIL"}
LOG_SEVERITY = {"debug": "DEBUG", "info": "INFO", "warning": "WARNING", "error": "ERROR", "critical": "FATAL"}


def _v(x: Any) -> Any:
    return getattr(x, "value", x)


def _s(x: Any) -> str:
    return "" if x is None else str(x)


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x and abs(x) != float("inf")


class _Dut:
    """dutInfo plus a lookup from measurement keys (``sda``, ``eth0``, ``gpu0``) to
    the ``hardwareInfoId`` of that part."""

    def __init__(self, record: RunRecord) -> None:
        inv = record.inventory if isinstance(record.inventory, dict) else {}
        host = record.host
        self.by_key: dict[str, str] = {}
        hw: list[dict[str, str]] = []

        def add(hid: str, name: Any, keys: tuple[Any, ...] = (), **fields: Any) -> None:
            doc = {"hardwareInfoId": hid, "name": _s(name) or hid}
            doc.update({k: _s(v) for k, v in fields.items() if v not in (None, "")})
            hw.append(doc)
            for k in keys:
                if k not in (None, ""):
                    self.by_key.setdefault(str(k), hid)

        def items(name: str) -> list[dict[str, Any]]:
            v = inv.get(name)
            return [x for x in v if isinstance(x, dict)] if isinstance(v, list) else []

        cpu = inv.get("cpu") if isinstance(inv.get("cpu"), dict) else None
        if cpu:
            add(
                "cpu",
                cpu.get("model") or "CPU",
                ("cpu",),
                manufacturer=cpu.get("vendor"),
                version=cpu.get("microcode"),
            )
        mem = inv.get("memory") if isinstance(inv.get("memory"), dict) else {}
        dimms = mem.get("dimms") if isinstance(mem.get("dimms"), list) else []
        for i, d in enumerate(dimms):
            if isinstance(d, dict):
                add(
                    f"dimm{i}",
                    d.get("locator") or f"DIMM {i}",
                    (d.get("locator"),),
                    location=d.get("locator"),
                    serialNumber=d.get("serial"),
                    partNumber=d.get("part_number"),
                    manufacturer=d.get("manufacturer"),
                    partType="DIMM",
                )
        for i, d in enumerate(items("disks")):
            add(
                f"disk{i}",
                d.get("model") or d.get("name"),
                (d.get("name"), d.get("path")),
                location=d.get("path"),
                serialNumber=d.get("serial"),
                version=d.get("firmware"),
                partType="disk",
            )
        for i, n in enumerate(items("nics")):
            add(
                f"nic{i}",
                n.get("name"),
                (n.get("name"), n.get("mac")),
                location=n.get("pci_address"),
                version=n.get("firmware"),
                partType="NIC",
            )
        for g in items("gpus"):
            idx = g.get("index")
            add(
                f"gpu{idx}",
                g.get("name") or f"GPU {idx}",
                (f"gpu{idx}", g.get("uuid"), g.get("pci_address")),
                location=g.get("pci_address"),
                serialNumber=g.get("serial"),
                version=g.get("vbios"),
                partType="GPU",
            )

        sw: list[dict[str, str]] = []
        for i, f in enumerate(record.firmware):
            doc = {
                "softwareInfoId": f"fw{i}",
                "name": f"{f.component} {f.identifier}".strip(),
                "softwareType": "FIRMWARE",
            }
            if f.version:
                doc["version"] = f.version
            sw.append(doc)
        system = inv.get("system") if isinstance(inv.get("system"), dict) else {}
        bmc = inv.get("bmc") if isinstance(inv.get("bmc"), dict) else {}
        if not record.firmware:  # fall back to what the inventory says
            if system.get("bios_version"):
                sw.append(
                    {
                        "softwareInfoId": "bios",
                        "name": "bios",
                        "version": _s(system["bios_version"]),
                        "softwareType": "FIRMWARE",
                    }
                )
            if bmc.get("firmware"):
                sw.append(
                    {
                        "softwareInfoId": "bmc",
                        "name": "bmc",
                        "version": _s(bmc["firmware"]),
                        "softwareType": "FIRMWARE",
                    }
                )
        platform = [
            {"info": info}
            for info in (
                " ".join(_s(system.get(k)) for k in ("vendor", "product")).strip(),
                f"serial {system['serial']}" if system.get("serial") else "",
                " ".join(_s(system.get(k)) for k in ("board_vendor", "board_product")).strip(),
            )
            if info
        ]
        self.doc: dict[str, Any] = {"dutInfoId": host.mac or host.name, "name": host.name}
        if platform:
            self.doc["platformInfos"] = platform
        if sw:
            self.doc["softwareInfos"] = sw
        if hw:
            self.doc["hardwareInfos"] = hw
        self.doc["metadata"] = {"host_id": host.id, "mac": host.mac}

    def hardware_id(self, key: str) -> str | None:
        return self.by_key.get(key) or self.by_key.get(key.split("/", 1)[0])


def _validators(rules: list[ThresholdRule]) -> tuple[list[dict], list[dict], list[dict], list[str]]:
    """(numeric validators, text validators, delta validators, unmapped rule descriptions)."""
    num, text, delta, unmapped = [], [], [], []
    for r in rules:
        name = describe_rule(r)
        t = r.threshold
        if r.op in NUMERIC_VALIDATOR and _num(t):
            num.append({"name": name, "type": NUMERIC_VALIDATOR[r.op], "value": t})
        elif r.op == "within_pct" and _num(t):
            tol = abs(r.nominal) * float(t) / 100.0
            num.append({"name": name, "type": "GREATER_THAN_OR_EQUAL", "value": r.nominal - tol})
            num.append({"name": name, "type": "LESS_THAN_OR_EQUAL", "value": r.nominal + tol})
        elif r.op == "eq" and _num(t):
            num.append({"name": name, "type": "EQUAL", "value": t})
        elif r.op in TEXT_VALIDATOR and isinstance(t, str):
            text.append({"name": name, "type": TEXT_VALIDATOR[r.op], "value": t})
        elif r.op == "delta_lte" and _num(t):
            delta.append({"name": name, "type": "LESS_THAN_OR_EQUAL", "value": t})
        else:
            unmapped.append(f"{name} (op {r.op})")
    return num, text, delta, unmapped


def _file_uri(path: str) -> str:
    if os.path.isabs(path):
        return "file://" + quote(path)
    return quote(path)


def ocptv_lines(record: RunRecord) -> Iterator[str]:
    """Yield the run as OCPTV 2.0 JSON lines (no trailing newlines)."""
    seq = 0
    now = datetime.now(UTC)
    run = record.run

    def line(obj: dict[str, Any], ts: datetime | None) -> str:
        nonlocal seq
        doc = {**obj, "sequenceNumber": seq, "timestamp": iso(ts or run.started_at or now)}
        seq += 1
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":"), allow_nan=False)

    dut = _Dut(record)
    yield line({"schemaVersion": {"major": 2, "minor": 0}}, run.started_at)
    yield line(
        {
            "testRunArtifact": {
                "testRunStart": {
                    "name": "vetting",
                    "version": vetting_core.__version__,
                    # the real command: the CLI's argv or the API request (server), the
                    # agent's argv (local mode); empty for a run that recorded none
                    "commandLine": run.origin or "",
                    "parameters": {
                        "profile": run.profile,
                        "non_destructive": run.non_destructive,
                        "override_flags": run.override_flags,
                    },
                    "dutInfo": dut.doc,
                    "metadata": {"run_id": run.id, "host_id": record.host.id},
                }
            }
        },
        run.started_at,
    )

    groups = series_mod.group(record.measurements)
    by_stage: dict[str, list[series_mod.SeriesData]] = {}
    for data in groups.values():
        by_stage.setdefault(data.key[0], []).append(data)
    breaches_by_stage: dict[str, list[dict[str, Any]]] = {}
    for b in _breaches(record):
        breaches_by_stage.setdefault(b["stage"], []).append(b)
    stage_names = {s.name for s in record.stages}
    artifacts_by_stage: dict[str | None, list[Any]] = {}
    for a in record.artifacts:
        artifacts_by_stage.setdefault(a.stage if a.stage in stage_names else None, []).append(a)
    subs_by_stage: dict[str, list[Any]] = {}
    for sub in sorted(record.substeps, key=lambda s: s.ordinal):
        subs_by_stage.setdefault(sub.stage_name, []).append(sub)
    spec_stage = next((s.name for s in record.stages if s.name.lower().startswith("spec")), None)
    finished = run.state in ("Completed", "Failed", "FailedHolding", "Released", "Cancelled", "Reporting")

    step_no = 0
    for stage in sorted(record.stages, key=lambda s: s.ordinal):
        sid = str(step_no)
        step_no += 1
        start_ts = stage.started_at or run.started_at
        end_ts = stage.completed_at or start_ts

        def step(obj: dict[str, Any], ts: datetime | None, _sid: str = sid) -> str:
            return line({"testStepArtifact": {"testStepId": _sid, **obj}}, ts)

        yield step({"testStepStart": {"name": stage.name}}, start_ts)
        for data in sorted(by_stage.get(stage.name, []), key=lambda d: d.key):
            yield from _series_lines(step, data, record.thresholds, dut)
        for b in breaches_by_stage.get(stage.name, []):
            sev = {"critical": "ERROR", "warning": "WARNING"}.get(b["severity"], "INFO")
            msg = (
                f"threshold breach: {b['description']} ({b['kind']} {b['key']}): "
                f"{b['count']} sample(s), worst {b['worst']}"
            )
            yield step(
                {"log": {"severity": sev, "message": msg}},
                datetime.fromisoformat(b["first_ts"].replace("Z", "+00:00")) if b["first_ts"] else end_ts,
            )
        if stage.name == spec_stage:
            for d in record.spec_diffs:
                sev = (
                    "INFO"
                    if d.ignored
                    else {"critical": "ERROR", "warning": "WARNING"}.get(_v(d.severity), "INFO")
                )
                msg = (
                    f"spec difference {d.field}: expected {d.expected!r}, found {d.actual!r}"
                    + (f" — {d.message}" if d.message else "")
                    + (" (ignored)" if d.ignored else "")
                )
                yield step({"log": {"severity": sev, "message": msg}}, end_ts)
        for a in artifacts_by_stage.get(stage.name, []):
            yield step({"file": _file_doc(a)}, end_ts)
        verdict = _v(stage.state)
        for sub in subs_by_stage.get(stage.name, []):
            sv = _v(sub.state)
            diag: dict[str, Any] = {
                "verdict": f"{stage.name}.{sub.name}-{sv}",
                "type": DIAGNOSIS_TYPE.get(sv, "UNKNOWN"),
                "subcomponent": {"name": sub.name},
            }
            if sub.reason:
                diag["message"] = sub.reason
            hid = dut.hardware_id(sub.name)
            if hid:
                diag["hardwareInfoId"] = hid
            yield step({"diagnosis": diag}, sub.completed_at or end_ts)
        if verdict in ("pending", "running") and finished:
            yield step(
                {
                    "error": {
                        "symptom": "stage-incomplete",
                        "message": stage.reason or f"stage ended {verdict}",
                    }
                },
                end_ts,
            )
        if verdict == "cannot_run":
            # the test could not run here (a tool missing, no permission): an error of
            # the test, no diagnosis of the DUT
            cause = (stage.summary.get("cannot_run") or {}).get("cause") or "unsupported"
            yield step({"error": {"symptom": f"cannot-run-{cause.replace('_', '-')}",
                                  "message": stage.reason or "the stage could not run here"}}, end_ts)
        else:
            diag = {"verdict": f"{stage.name}-{verdict}", "type": DIAGNOSIS_TYPE.get(verdict, "UNKNOWN")}
            if stage.reason:
                diag["message"] = stage.reason
            yield step({"diagnosis": diag}, end_ts)
        yield step({"testStepEnd": {"status": STEP_STATUS.get(verdict, "ERROR")}}, end_ts)

    spare = artifacts_by_stage.get(None, [])
    if spare:
        sid = str(step_no)
        ts = run.completed_at or now
        yield line({"testStepArtifact": {"testStepId": sid, "testStepStart": {"name": "RunArtifacts"}}}, ts)
        for a in spare:
            yield line({"testStepArtifact": {"testStepId": sid, "file": _file_doc(a)}}, ts)
        yield line({"testStepArtifact": {"testStepId": sid, "testStepEnd": {"status": "COMPLETE"}}}, ts)

    if spec_stage is None:
        for d in record.spec_diffs:
            sev = (
                "INFO"
                if d.ignored
                else {"critical": "ERROR", "warning": "WARNING"}.get(_v(d.severity), "INFO")
            )
            yield line(
                {
                    "testRunArtifact": {
                        "log": {
                            "severity": sev,
                            "message": f"spec difference {d.field}: expected {d.expected!r}, found {d.actual!r}",
                        }
                    }
                },
                run.started_at,
            )
    for e in sorted(record.events, key=lambda e: e.ts):
        msg = e.message or e.kind
        if e.actor:
            msg = f"{msg} (by {e.actor})"
        yield line(
            {
                "testRunArtifact": {
                    "log": {"severity": LOG_SEVERITY.get(e.level, "INFO"), "message": f"[{e.kind}] {msg}"}
                }
            },
            e.ts,
        )
    verdict = run_verdict(record)
    if verdict in ("failed", "hold") and not any(_v(s.state) == "failed" for s in record.stages):
        yield line(
            {
                "testRunArtifact": {
                    "error": {
                        "symptom": "run-failed",
                        "message": run.reason or "the run failed outside any stage",
                    }
                }
            },
            run.completed_at,
        )
    status, result = {
        "passed": ("COMPLETE", "PASS"),
        "failed": ("COMPLETE", "FAIL"),
        "hold": ("COMPLETE", "FAIL"),
    }.get(verdict, ("ERROR", "NOT_APPLICABLE"))
    yield line(
        {"testRunArtifact": {"testRunEnd": {"status": status, "result": result}}}, run.completed_at or now
    )


def _file_doc(a: Any) -> dict[str, Any]:
    name = PurePosixPath(a.path).name or a.path
    doc: dict[str, Any] = {
        "displayName": name,
        "uri": _file_uri(a.path),
        "isSnapshot": False,
        "description": f"{a.kind} artifact",
        "metadata": {"sha256": a.sha256, "size_bytes": a.size_bytes, "kind": a.kind},
    }
    ctype = mimetypes.guess_type(name)[0]
    if ctype:
        doc["contentType"] = ctype
    return doc


def _series_lines(step, data: series_mod.SeriesData, rules: list[ThresholdRule], dut: _Dut) -> Iterator[str]:
    stage, kind, key, unit = data.key
    applicable = rules_for(rules, stage, kind, key)
    num_v, text_v, delta_v, unmapped = _validators(applicable)
    base_meta: dict[str, Any] = {"stage": stage, "kind": kind, "key": key, "count": len(data.values)}
    if unmapped:
        base_meta["unmapped_rules"] = unmapped
    hid = dut.hardware_id(key)
    ts_last = data.ts[-1] if data.ts else None

    def measurement(name: str, value: Any, validators: list[dict], **meta: Any) -> str:
        doc: dict[str, Any] = {"name": name, "value": value, "metadata": {**base_meta, **meta}}
        if unit:
            doc["unit"] = unit
        if validators:
            doc["validators"] = validators
        if hid:
            doc["hardwareInfoId"] = hid
        return step({"measurement": doc}, ts_last)

    nums = series_mod.finite(data.values)
    if nums:
        lo, hi = min(nums), max(nums)
        if len(nums) == 1:
            yield measurement(f"{kind}:{key}", lo, num_v, statistic="value")
        else:
            med = sorted(nums)[len(nums) // 2]
            yield measurement(f"{kind}:{key}:min", lo, num_v, statistic="min", median=med)
            yield measurement(f"{kind}:{key}:max", hi, num_v, statistic="max", median=med)
        if delta_v:
            yield measurement(f"{kind}:{key}:delta", nums[-1] - nums[0], delta_v, statistic="last-first")
    texts = [t for t in data.texts if t is not None]
    if texts:
        yield measurement(f"{kind}:{key}:text", texts[-1], text_v, statistic="last", distinct=len(set(texts)))
    if not nums and not texts:
        yield step(
            {
                "log": {
                    "severity": "WARNING",
                    "message": f"{kind} {key}: {len(data.values)} sample(s), none with a valid value",
                }
            },
            ts_last,
        )
