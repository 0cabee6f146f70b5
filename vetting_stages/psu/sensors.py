"""lm-sensors (``sensors -j`` JSON and plain ``sensors`` text) and hwmon sysfs.

All three yield ``(chip, label, volts)`` triples of voltage inputs; the stage keeps
the ones whose label names a PSU rail (:func:`vetting_stages.psu.rails.classify`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from vetting_core import hwmon


class SensorsParseError(ValueError):
    pass


def parse_json(text: str) -> list[tuple[str, str, float]]:
    """``sensors -j``: ``{chip: {"Adapter": ..., label: {"inN_input": v, ...}}}``."""
    text = text.strip()
    if not text:
        return []
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SensorsParseError(f"sensors -j output is not JSON: {exc.msg}") from None
    if not isinstance(doc, dict):
        raise SensorsParseError("sensors -j output is not an object")
    out = []
    for chip, features in doc.items():
        if not isinstance(features, dict):
            continue
        for label, sub in features.items():
            if not isinstance(sub, dict):
                continue
            for key, value in sub.items():
                if re.fullmatch(r"in\d+_input", key) and isinstance(value, (int, float)):
                    out.append((chip, label, float(value)))
    return out


_TEXT_LINE = re.compile(r"^(?P<label>[^:]+):\s+(?P<v>[+-]?\d+(?:\.\d+)?) V\b")


def parse_text(text: str) -> list[tuple[str, str, float]]:
    """Plain ``sensors`` output: chip header lines, then ``label:  +3.28 V  (min = …)``."""
    out = []
    chip = ""
    for line in text.splitlines():
        if not line.strip():
            chip = ""
            continue
        m = _TEXT_LINE.match(line)
        if m:
            out.append((chip, m["label"].strip(), float(m["v"])))
        elif ":" not in line and not line.startswith(" "):
            chip = line.strip()
    return out


def read_hwmon(root: str | Path = hwmon.HWMON_ROOT) -> list[tuple[str, str, float]]:
    """Voltage inputs as ``(chip, label, volts)`` (:mod:`vetting_core.hwmon`: the
    sidecar's keys and order)."""
    return [(ch.chip, ch.label, value) for ch, value in hwmon.read_all(root, kinds={"volt"})]
