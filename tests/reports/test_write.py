"""write_reports: the three files, written atomically, and the layering rule."""

from __future__ import annotations

import json
import subprocess
import sys

from vetting_reports import build_report, ocptv_lines, write_reports


def test_writes_three_files(tmp_path, failed_record, registry):
    paths = write_reports(failed_record, registry, tmp_path / "run-4217")
    assert {k: p.name for k, p in paths.items()} == {
        "json": "report.json",
        "html": "report.html",
        "ocptv": "report.ocptv.jsonl",
    }
    doc = json.loads(paths["json"].read_text())
    expected = build_report(failed_record, registry)
    doc.pop("generated_at"), expected.pop("generated_at")
    assert doc == expected
    html = paths["html"].read_text()
    assert html.startswith("<!doctype html>") and "FAILED" in html and "Hottest sensor" in html
    lines = paths["ocptv"].read_text().splitlines()
    fresh = list(ocptv_lines(failed_record))
    assert len(lines) == len(fresh) and json.loads(lines[0]) == json.loads(fresh[0])
    assert sorted(p.name for p in paths["json"].parent.iterdir()) == [
        "report.html",
        "report.json",
        "report.ocptv.jsonl",
    ]  # no temporary files left behind


def test_overwrites_in_place(tmp_path, passed_record, failed_record):
    write_reports(failed_record, None, tmp_path)
    paths = write_reports(passed_record, None, tmp_path)
    assert json.loads(paths["json"].read_text())["verdict"] == "passed"


def test_imports_only_core_and_jinja2():
    code = (
        "import sys, vetting_reports, vetting_reports.demo;"
        "bad=[m for m in sys.modules if m.split('.')[0] in "
        "('vetting_server','vetting_agent','vetting_stages','vetting_notifiers','litestar','piccolo','httpx')];"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_files_follow_the_umask(tmp_path, passed_record):
    import os

    old = os.umask(0o022)
    try:
        paths = write_reports(passed_record, None, tmp_path)
    finally:
        os.umask(old)
    assert {oct(p.stat().st_mode & 0o777) for p in paths.values()} == {"0o644"}
