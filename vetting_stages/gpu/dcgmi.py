"""``dcgmi diag -r N -j``: argv and a pure parser for DCGM 1.7–3.x and 4.x JSON.

dcgmi may print a line before the JSON (DCGM's own tests keep a real output with a
stray ``WARNING`` line) and 3.x puts ``null`` entries between tests; 4.x moved the
tests to the top level with ``entity_group``/``entity_id`` results. Statuses are
compared case-insensitively: pass / fail / warn / skip / not run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


class DcgmParseError(ValueError):
    pass


def build_argv(level: int, *, gpus: list[int] | None = None) -> list[str]:
    argv = ["dcgmi", "diag", "-r", str(int(level)), "-j"]
    if gpus:
        argv += ["-i", ",".join(str(g) for g in gpus)]
    return argv


@dataclass
class DcgmTestResult:
    test: str
    category: str
    status: str  # pass / fail / warn / skip / notrun
    gpus: list[int] | None  # None = all GPUs of the group
    messages: list[str] = field(default_factory=list)


@dataclass
class DcgmReport:
    version: str
    results: list[DcgmTestResult]

    def failures(self) -> list[DcgmTestResult]:
        return [r for r in self.results if r.status == "fail"]

    def warnings(self) -> list[DcgmTestResult]:
        return [r for r in self.results if r.status == "warn"]

    def gpu_failures(self, index: int) -> list[DcgmTestResult]:
        return [r for r in self.failures() if r.gpus is None or index in r.gpus]


def _gpu_ids(value: Any) -> list[int] | None:
    if value is None or value == "":
        return None
    if isinstance(value, int):
        return [value]
    try:
        return [int(x) for x in str(value).split(",") if x.strip()]
    except ValueError:
        return None


def _messages(entry: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for key in ("warnings", "errors", "warning", "error", "info"):
        val = entry.get(key)
        if isinstance(val, str):
            out.append(val)
        elif isinstance(val, list):
            for v in val:
                out.append(v.get("warning") or v.get("message") or json.dumps(v) if isinstance(v, dict) else str(v))
    return out


def _status(s: Any) -> str:
    s = str(s or "").strip().lower().replace(" ", "")
    return {"passed": "pass", "failed": "fail", "warning": "warn", "skipped": "skip"}.get(s, s)


def parse(text: str) -> DcgmReport:
    start = text.find("{")
    if start < 0:
        raise DcgmParseError("dcgmi printed no JSON document")
    try:
        doc, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError as exc:
        raise DcgmParseError(f"dcgmi JSON is malformed: {exc.msg} at {exc.pos}") from None
    if not isinstance(doc, dict):
        raise DcgmParseError("dcgmi JSON is not an object")
    results: list[DcgmTestResult] = []
    if "DCGM GPU Diagnostic" in doc:  # 1.7 – 3.x
        body = doc["DCGM GPU Diagnostic"] or {}
        version = str(body.get("version", ""))
        if body.get("runtime_error"):
            raise DcgmParseError(f"dcgmi diag runtime error: {body['runtime_error']}")
        for cat in body.get("test_categories") or []:
            if not isinstance(cat, dict):
                continue
            for test in cat.get("tests") or []:
                if not isinstance(test, dict):
                    continue  # the null entries of real 3.x output
                for res in test.get("results") or []:
                    if not isinstance(res, dict):
                        continue
                    results.append(
                        DcgmTestResult(
                            test=str(test.get("name", "")),
                            category=str(cat.get("category", "")),
                            status=_status(res.get("status")),
                            gpus=_gpu_ids(res.get("gpu_ids", res.get("gpu_id"))),
                            messages=_messages(res),
                        )
                    )
    elif "tests" in doc:  # 4.x
        version = str(doc.get("version", ""))
        if doc.get("runtime_error"):
            raise DcgmParseError(f"dcgmi diag runtime error: {doc['runtime_error']}")
        for test in doc.get("tests") or []:
            if not isinstance(test, dict):
                continue
            for res in test.get("results") or []:
                if not isinstance(res, dict) or str(res.get("entity_group", "GPU")).upper() != "GPU":
                    continue
                results.append(
                    DcgmTestResult(
                        test=str(test.get("name", "")),
                        category=str(test.get("category", "")),
                        status=_status(res.get("status")),
                        gpus=_gpu_ids(res.get("entity_id")),
                        messages=_messages(res),
                    )
                )
    else:
        raise DcgmParseError("unrecognised dcgmi diag JSON (no 'DCGM GPU Diagnostic' nor 'tests')")
    if not results:
        raise DcgmParseError("dcgmi diag JSON holds no test results")
    return DcgmReport(version=version, results=results)
