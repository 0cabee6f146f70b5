"""The memtester report section, on a report built by Vetting from a real stage run."""

from pathlib import Path

import pytest
from vetting_core.testing import run_record, run_stage

from vetting_example import plugin
from vetting_example.report import render

FIXTURES = Path(__file__).parent / "fixtures" / "memtester" / "4.6.0"


@pytest.fixture
def registry(vetting_registry):
    return vetting_registry(plugin)


@pytest.mark.anyio
async def test_section_in_a_real_report(fake_tools, registry, stage_workdir):
    from vetting_reports.build import build_report

    fake_tools.replay("memtester", FIXTURES, "injected")
    run = await run_stage("Memtester", registry=registry, params={"mib": 16}, workdir=stage_workdir)
    report = build_report(run_record(run), registry)
    section = report["sections"]["memtester"]
    assert section["error"] is None, section.get("traceback")
    assert section["title"] == "Memory test (memtester)"
    assert section["data"]["verdict"] == "failed"
    [worker] = section["data"]["workers"]
    assert worker["name"] == "memtester#0" and worker["failures"] == 18
    assert worker["tested_mib"] == 16.0 and worker["coverage_pct"] == 100.0
    assert "<td>memtester#0</td><td>failed</td><td>16.0 MiB</td>" in section["html"]
    assert "18 memory error(s) reported" in section["html"]


def test_no_memtester_stage_no_section():
    assert render({"stages": [{"name": "CPUStress", "verdict": "passed"}]}) is None
    assert render({}) is None


def test_values_are_escaped():
    report = {
        "stages": [
            {
                "name": "Memtester",
                "verdict": "failed",
                "reason": "<script>alert(1)</script>",
                "summary": {"plan": {"total_mib": "<b>", "workers": 1, "loops": 1, "available_mib": 2}},
                "substeps": [{"name": "<img src=x>", "verdict": "failed", "summary": {"failures": "<i>"}}],
            }
        ]
    }
    html = render(report).html
    assert "<script>" not in html and "<img" not in html and "<b>" not in html and "<i>" not in html
    assert "&lt;script&gt;" in html and "&lt;img src=x&gt;" in html
