"""render_html: self-contained, escaped, verdict first."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import msgspec

from vetting_core.model import Stage, Verdict
from vetting_reports import build_report, render_html
from vetting_reports.series import MAX_POINTS

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
SVG_EMPTY_OK = {"line", "polyline", "polygon", "rect", "path", "circle"}


class Balance(HTMLParser):
    """Records every element and checks that tags nest properly."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
            return
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse(html: str) -> Balance:
    p = Balance()
    p.feed(html)
    p.close()
    return p


def test_well_formed_and_self_contained(failed_record, registry):
    html = render_html(build_report(failed_record, registry))
    p = parse(html)
    assert p.errors == [] and p.stack == []
    tags = {t for t, _ in p.tags}
    assert not tags & {"script", "link", "img", "iframe", "object", "embed"}
    for tag, attrs in p.tags:
        assert "src" not in attrs, tag
        if "href" in attrs:
            assert attrs["href"].startswith("#"), attrs["href"]
    assert "@import" not in html and "url(" not in html
    csp = next(
        a["content"] for t, a in p.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"
    )
    assert "default-src 'none'" in csp


def test_verdict_and_reasons_come_first(failed_record):
    html = render_html(build_report(failed_record))
    text = " ".join(" ".join(parse(html).text).split())
    assert text.index("FAILED") < text.index("What failed and why") < text.index("Stages")
    why = text[text.index("What failed and why") : text.index("Stages")]
    assert "nvme1n1: reallocated sectors grew by 12 during the stage" in why
    over = [e.observed for e in failed_record.evaluations if e.key == "cpu1"]
    assert f"temp cpu* ≤ 85 °C — worst {max(over):g} °C, {len(over)} samples out of bounds (cpu1)" in why
    assert "<title>FAILED · web-07 · run 4217" in html


def test_passed_report_says_so(passed_record):
    html = render_html(build_report(passed_record))
    text = " ".join(" ".join(parse(html).text).split())
    assert text.startswith("PASSED") or "PASSED web-07" in text
    assert "What failed and why" not in text and "All 11 stages ended without failure" in text


def test_hostile_data_is_escaped(failed_record):
    evil = "<script>alert(1)</script>"
    rec = msgspec.structs.replace(
        failed_record,
        host=msgspec.structs.replace(failed_record.host, name=evil, mac='"><img src=x onerror=alert(2)>'),
        stages=[
            *failed_record.stages[:1],
            Stage(
                name="SMART",
                ordinal=300,
                state=Verdict.failed,
                reason="</td></tr></table><marquee>boom</marquee>",
            ),
        ],
        inventory={**failed_record.inventory, "notes": "</pre><script>alert(3)</script>"},
    )
    html = render_html(build_report(rec))
    p = parse(html)
    assert p.errors == []
    assert not any(t == "script" for t, _ in p.tags) and not any(t == "img" for t, _ in p.tags)
    assert not any(t == "marquee" for t, _ in p.tags)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;/td&gt;&lt;/tr&gt;&lt;/table&gt;&lt;marquee&gt;boom&lt;/marquee&gt;" in html
    assert "<script>alert(3)" not in html


def test_charts_are_inline_svg_with_bounded_points(failed_record):
    report = build_report(failed_record)
    html = render_html(report)
    assert html.count("<svg") == len(report["charts"]) >= 4
    for pts in re.findall(r'<polyline points="([^"]*)"', html):
        coords = pts.split()
        assert 1 <= len(coords) <= MAX_POINTS
        for c in coords:
            x, y = map(float, c.split(","))
            assert 0 <= x <= 760 and 0 <= y <= 240
    assert "≤ 85" in html  # the threshold line is labelled


def test_plugin_sections_render_and_errors_show(failed_record, registry):
    html = render_html(build_report(failed_record, registry))
    hottest = max(m.value for m in failed_record.measurements if m.kind == "temp")
    assert f"<p class='hot'>cpu1: {hottest} °C</p>" in html  # trusted plugin HTML, as-is
    assert "The report section <b>broken</b> failed: <code>ZeroDivisionError: plugin bug</code>" in html
    assert html.index("Hottest sensor") < html.index("section-broken") < html.index("section-junk")


def test_every_verdict_renders(passed_record):
    for state, stage_verdict, expected in [
        ("FailedHolding", "hold", "HOLD"),
        ("Cancelled", "pending", "CANCELLED"),
        ("Running", "running", "INCOMPLETE"),
        ("Completed", "cannot_run", "INCOMPLETE"),
    ]:
        rec = msgspec.structs.replace(
            passed_record,
            run=msgspec.structs.replace(passed_record.run, state=state, reason="operator cancelled"),
            stages=[
                Stage(
                    name="Storage",
                    ordinal=500,
                    state=Verdict(stage_verdict),
                    reason="wipe probe found ext4 on sda",
                )
            ],
            substeps=[],
            measurements=[],
        )
        html = render_html(build_report(rec))
        p = parse(html)
        assert p.errors == [] and f'class="verdict">{expected}<' in html.replace("\n", "")
        if expected == "INCOMPLETE":
            assert "Why the run is incomplete" in html and "What failed" not in html
        else:
            assert "What failed and why" in html
        if stage_verdict == "cannot_run":  # not a failure: its own badge, amber, in the list
            assert '<span class="badge v-cannot_run">could not run</span> <b>Storage</b>' in html
