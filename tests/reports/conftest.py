from __future__ import annotations

import pytest

from vetting_core import ReportSection, ReportSectionSpec, hookimpl, load_registry
from vetting_reports.demo import demo_record


@pytest.fixture(scope="module")
def failed_record():
    return demo_record(6000, failed=True)


@pytest.fixture(scope="module")
def passed_record():
    return demo_record(3000, failed=False)


class SectionsPlugin:
    """Three report sections: one useful, one that raises, one that returns junk."""

    @staticmethod
    def hottest(report):
        temps = [s for s in report["series"] if s["kind"] == "temp" and s["max"] is not None]
        hottest = max(temps, key=lambda s: s["max"])
        report["verdict"] = "tampered"  # must not leak into the real report
        return ReportSection(
            title="Hottest sensor",
            html=f"<p class='hot'>{hottest['key']}: {hottest['max']} °C</p>",
            data={"key": hottest["key"], "max": hottest["max"]},
        )

    @staticmethod
    def broken(report):
        raise ZeroDivisionError("plugin bug")

    @staticmethod
    def junk(report):
        return {"title": "not a ReportSection"}

    @staticmethod
    def nothing(report):
        return None

    @hookimpl
    def vetting_report_sections(self):
        return [
            ReportSectionSpec(name="hottest", render=self.hottest, order=10),
            ReportSectionSpec(name="broken", render=self.broken, order=20),
            ReportSectionSpec(name="junk", render=self.junk, order=30),
            ReportSectionSpec(name="nothing", render=self.nothing, order=40),
        ]


@pytest.fixture(scope="module")
def registry():
    return load_registry(entry_points=False, plugins=[("sections", SectionsPlugin())])
