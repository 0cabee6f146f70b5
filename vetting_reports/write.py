"""``write_reports``: the three report files of a run, written atomically.

Each file is written to a temporary name in the same directory and renamed into
place, so a reader (the download endpoint) never sees half a report.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec

from vetting_core.model import RunRecord

from .build import build_report
from .ocptv import ocptv_lines
from .render import render_html

FILENAMES = {"json": "report.json", "html": "report.html", "ocptv": "report.ocptv.jsonl"}


def _atomic_write(path: Path, chunks: Iterable[bytes]) -> None:
    # os.open with 0o666 lets the process umask decide the mode, as for any other file
    # the server writes (mkstemp would force 0600 on the downloaded reports)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_reports(record: RunRecord, registry: Any, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``report.json``, ``report.html`` and ``report.ocptv.jsonl`` into ``out_dir``
    (created if needed); return ``{"json": path, "html": path, "ocptv": path}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = build_report(record, registry)
    paths = {k: out / name for k, name in FILENAMES.items()}
    _atomic_write(paths["json"], [msgspec.json.format(msgspec.json.encode(report), indent=2), b"\n"])
    _atomic_write(paths["html"], [render_html(report).encode("utf-8")])
    _atomic_write(paths["ocptv"], ((ln + "\n").encode("utf-8") for ln in ocptv_lines(record)))
    return paths
