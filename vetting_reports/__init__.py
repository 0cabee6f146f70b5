"""Run reports: JSON (versioned schema), self-contained HTML, and OCP Test & Validation
2.0 JSONL.

Shared by the server (at Reporting and for downloads) and the agent's local mode, so
it imports only ``vetting_core`` and Jinja2. The input is a
:class:`vetting_core.model.RunRecord`::

    from vetting_reports import write_reports
    paths = write_reports(record, registry, out_dir)   # report.json/.html/.ocptv.jsonl
"""

from .build import SCHEMA, SCHEMA_VERSION, build_report, run_verdict
from .ocptv import ocptv_lines
from .render import render_html
from .write import write_reports

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "build_report",
    "ocptv_lines",
    "render_html",
    "run_verdict",
    "write_reports",
]
