"""When each step of a PXE boot happened, from the files the boot writes as it goes.

    with Tail({"console": console_log, "dnsmasq": dnsmasq_log}) as tail:
        ...                                   # power on, boot, run
    steps = boot_timeline(tail.lines, run_events, mac=mac)

:class:`Tail` polls files (a QEMU ``-serial file:`` console, dnsmasq's log) every
50 ms and stamps each new line with the wall clock: the console has no times of the
host's, dnsmasq's are to the second. :func:`boot_timeline` picks the milestones out
of those lines and the run's events (which the server stamps): power-on (the boot
provider's power-on accepted) → DHCP → iPXE script → kernel → agent hello → claim,
each in seconds after the power-on. ``bench/pxe_boot.py``
prints it; the end-to-end tests write it as ``timeline.json``.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any


class Tail:
    def __init__(self, files: dict[str, Path], interval: float = 0.05) -> None:
        self.files = files
        self.interval = interval
        self.lines: list[tuple[float, str, str]] = []  # (wall clock, tag, line)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tail", daemon=True)

    def _run(self) -> None:
        offsets = dict.fromkeys(self.files, 0)
        partial = dict.fromkeys(self.files, b"")
        while True:
            stopping = self._stop.is_set()
            for tag, path in self.files.items():
                try:
                    with open(path, "rb") as f:
                        f.seek(offsets[tag])
                        chunk = f.read()
                except OSError:
                    continue
                if not chunk:
                    continue
                now = time.time()
                offsets[tag] += len(chunk)
                *complete, partial[tag] = (partial[tag] + chunk).split(b"\n")
                self.lines += [(now, tag, ln.decode(errors="replace").rstrip("\r")) for ln in complete]
            if stopping:
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> Tail:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def _at(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()


def boot_timeline(lines: Iterable[tuple[float, str, str]], events: list[dict[str, Any]], *, mac: str) -> list[tuple[str, float]]:
    """``[(milestone, seconds after power-on)]`` in boot order; a milestone that did not
    happen (or left no trace) is left out. ``events`` are the run's events (oldest first)."""
    lines = list(lines)

    def line(tag: str, pattern: str) -> float | None:
        rx = re.compile(pattern)
        return next((t for t, g, text in lines if g == tag and rx.search(text)), None)

    def event(pattern: str) -> float | None:
        rx = re.compile(pattern)
        return next((_at(e) for e in events if rx.search(e.get("message", ""))), None)

    # the boot provider's power-on was accepted (WaitingBoot -> Booting)
    power_on = next((_at(e) for e in events if (e.get("data") or {}).get("event") == "boot_requested"), None)
    if power_on is None:
        return []
    mac_rx = re.escape(mac.lower())
    steps = [
        ("DHCP offer", line("dnsmasq", rf"DHCPOFFER\(\S+\) \S+ {mac_rx}")),
        ("DHCP ack", line("dnsmasq", rf"DHCPACK\(\S+\) \S+ {mac_rx}")),
        ("iPXE script served", event(r"iPXE script .*served to")),
        ("kernel started", line("console", r"Linux version \d")),
        ("initrd unpacked", line("console", r"Freeing initrd memory|Run /init as init process|systemd\[1\]: systemd \d")),
        ("network online", line("console", r"Reached target .*network-online|vetting-agent.*start")),
        ("agent hello", event(r"said hello")),
        ("run claimed", event(r"claimed")),
    ]
    return [(name, round(t - power_on, 2)) for name, t in steps if t is not None]


def format_timeline(steps: list[tuple[str, float]]) -> str:
    out, prev = [], 0.0
    for name, t in steps:
        out.append(f"  {name:<20} {t:7.1f} s   (+{max(0.0, t - prev):5.1f})")
        prev = t
    return "\n".join(out)
