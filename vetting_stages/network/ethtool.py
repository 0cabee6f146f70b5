"""``ethtool -S`` NIC statistics: a pure parser and the error-counter filter.

Only counters whose names say they count errors/drops are judged: their delta over
the stage must be zero (``nic_counter``/``<nic>/<counter>``, ``delta_lte 0``).
Traffic counters (packets, bytes) obviously grow and are not recorded.
"""

from __future__ import annotations

import re

_LINE = re.compile(r"^\s*(?P<key>[^:]+?):\s+(?P<value>-?\d+)\s*$")
_ERRORISH = re.compile(
    r"(err|drop|discard|crc|fcs|miss|fifo|over(run|flow)|collision|align|symbol|"
    r"timeout|fail|fault|bad|illegal|runt|jabber|frag|underrun|abort|reset)",
    re.IGNORECASE,
)
_NOT_ERRORS = re.compile(r"(xdp_redirect$|_xdp_tx$|_xdp_packets$|_xdp_bytes$)")


def parse_stats(text: str) -> dict[str, int]:
    """``NIC statistics:`` blocks → ``{counter: value}``; ``no stats available`` → ``{}``."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        if line.strip().lower() in ("nic statistics:", "no stats available"):
            continue
        m = _LINE.match(line)
        if m:
            out[m["key"].strip()] = int(m["value"])
    return out


def error_counters(stats: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in stats.items() if _ERRORISH.search(k) and not _NOT_ERRORS.search(k)}


def deltas(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Counters that grew (a counter that went backwards means a driver reset: reported as-is)."""
    return {k: after[k] - before[k] for k in after if k in before and after[k] != before[k]}
