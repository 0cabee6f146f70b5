"""Reading hwmon sensors (``/sys/class/hwmon/hwmon*``): one discovery, one order, one key.

Stages (Burn's temperatures, PSU's voltage rails) and the agent's sensor sidecar read
the same files; when each walked the tree its own way, the same sensor could get two
keys and series came out in different orders. Here it is decided once:

- chips in the kernel's registration order, by their ``hwmon<N>`` number (``hwmon2``
  before ``hwmon10``; a plain string sort would not);
- channels by type, then by number (``temp2`` before ``temp10``);
- key ``<chip>/<label>``: the chip's ``name`` (the directory's name when it has none;
  a name used again, e.g. a second ``coretemp`` package, becomes ``coretemp#1``) and
  the channel's ``<type><N>_label`` (else ``<type><N>``);
- ``<type><N>_input``; ``_average`` only where a channel has no ``_input`` (some
  power meters publish just the average);
- units converted: m°C → ``temp`` in °C, RPM → ``fan``, µW → ``power`` in W,
  mV → ``volt`` in V.

:func:`discover` walks the tree once; :func:`read_value` reads one channel. A reader
that polls (the sidecar, once a second) keeps the files open and reads each with
``pread`` instead; :func:`parse_value` is the conversion both use.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

HWMON_ROOT = "/sys/class/hwmon"

_FILE = re.compile(r"^(temp|fan|power|in)(\d+)_(input|average)$")
_CHIP = re.compile(r"\d+")
# sysfs prefix → (kind, divisor to the unit, unit); dividing (61250 / 1000 = 61.25)
# is exact where multiplying by 1e-3 can be one ulp off
KINDS: dict[str, tuple[str, float, str]] = {
    "temp": ("temp", 1000.0, "C"),
    "fan": ("fan", 1.0, "RPM"),
    "power": ("power", 1e6, "W"),
    "in": ("volt", 1000.0, "V"),
}


@dataclass(frozen=True)
class HwmonChannel:
    """One sensor file: what it measures, what it is called, where it is."""

    kind: str  # temp, fan, power, volt
    chip: str  # the chip's name, ``name#N`` for a repeated name
    label: str
    path: str
    divisor: float
    unit: str

    @property
    def key(self) -> str:
        return f"{self.chip}/{self.label}"


def _chip_number(path: str) -> int:
    m = _CHIP.search(os.path.basename(path))
    return int(m.group()) if m else 0


def _read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def discover(root: str | os.PathLike[str] = HWMON_ROOT, kinds: Collection[str] | None = None) -> list[HwmonChannel]:
    """Every channel under ``root`` (of the given ``kinds``: ``temp``, ``fan``,
    ``power``, ``volt``; default all), in the order described above. A missing root
    or an unreadable chip yields nothing, never an error."""
    root = str(root)
    try:
        chips = [os.path.join(root, d) for d in os.listdir(root) if d.startswith("hwmon")]
    except OSError:
        return []
    chips.sort(key=lambda p: (_chip_number(p), p))
    out: list[HwmonChannel] = []
    seen_names: dict[str, int] = {}
    for chip in chips:
        name = _read_text(os.path.join(chip, "name")) or os.path.basename(chip)
        repeat = seen_names.get(name, 0)
        seen_names[name] = repeat + 1
        chip_key = name if repeat == 0 else f"{name}#{repeat}"
        try:
            entries = sorted(os.listdir(chip))
        except OSError:
            continue
        files: dict[tuple[str, int], str] = {}
        for entry in entries:
            m = _FILE.match(entry)
            if not m:
                continue
            prefix, num, what = m.groups()
            if kinds is not None and KINDS[prefix][0] not in kinds:
                continue
            # <type><N>_input wins over <type><N>_average when both exist
            if what == "average" and (prefix, int(num)) in files:
                continue
            files[(prefix, int(num))] = entry
        for (prefix, num), entry in sorted(files.items()):
            kind, divisor, unit = KINDS[prefix]
            label = _read_text(os.path.join(chip, f"{prefix}{num}_label")) or f"{prefix}{num}"
            out.append(HwmonChannel(kind, chip_key, label, os.path.join(chip, entry), divisor, unit))
    return out


def parse_value(raw: bytes | str, channel: HwmonChannel) -> float | None:
    """A sysfs reading in the channel's unit; ``None`` for garbage."""
    try:
        return int(raw.strip()) / channel.divisor
    except ValueError:
        return None


def read_value(channel: HwmonChannel) -> float | None:
    """Read one channel now; ``None`` when the sensor is not ready (EIO, ENODATA) or
    prints garbage."""
    try:
        raw = Path(channel.path).read_bytes()
    except OSError:
        return None
    return parse_value(raw, channel)


def read_all(root: str | os.PathLike[str] = HWMON_ROOT, kinds: Collection[str] | None = None) -> list[tuple[HwmonChannel, float]]:
    """Discover and read once: ``(channel, value)`` for every channel that answered."""
    out = []
    for ch in discover(root, kinds):
        value = read_value(ch)
        if value is not None:
            out.append((ch, value))
    return out
