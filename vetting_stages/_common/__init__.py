"""Small helpers shared by the built-in stages (read-only for other stage authors).

Kept tiny on purpose: anything a stage needs from the framework comes from
``vetting_core``; this module only holds text-munging and sysfs helpers that more
than one built-in stage needs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from vetting_core.tools import ToolNotFound, which


def tool_missing(binary: str) -> str | None:
    """``None`` when ``binary`` is installed, else a reason a person can read."""
    try:
        which(binary)
    except ToolNotFound as exc:
        return str(exc)
    return None


def read_sysfs(path: str | Path, default: str | None = None) -> str | None:
    """One sysfs attribute, stripped; ``default`` when absent or unreadable."""
    try:
        return Path(path).read_text(errors="replace").strip()
    except OSError:
        return default


def to_int(value: Any) -> int | None:
    """Leading integer of ``value`` (``"25000Mb/s"`` → 25000); None when there is none."""
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    m = re.match(r"\s*(-?\d+)", str(value))
    return int(m.group(1)) if m else None


def to_float(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    m = re.match(r"\s*(-?\d+(?:\.\d+)?)", str(value))
    return float(m.group(1)) if m else None


def loads_json(text: str, what: str) -> Any:
    """``json.loads`` whose error names the tool (garbage output is a finding)."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError) as exc:
        snippet = (text or "").strip().splitlines()[:1]
        raise ValueError(f"{what} printed invalid JSON ({exc.msg} at char {exc.pos}): {snippet[0][:120] if snippet else '<empty>'}") from None


def colon_fields(text: str) -> dict[str, str]:
    """``Key : value`` lines (ipmitool, ethtool -i) → dict; first occurrence wins."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        key, _, value = line.partition(":")
        key = key.strip()
        if key and key not in out:
            out[key] = value.strip()
    return out


def safe_name(text: str) -> str:
    """A file-name-safe version of a device path (``/dev/nvme0n1`` → ``nvme0n1``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text.removeprefix("/dev/")).strip("_") or "device"
