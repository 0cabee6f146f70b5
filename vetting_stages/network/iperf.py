"""iperf3 client: argv builder and pure parser of ``iperf3 -J`` output.

iperf3 3.12 exits 0 even when it could not connect ("unable to connect to server:
Connection refused") or the server was busy, so the verdict is the JSON's
``error`` member and the presence of an ``end`` summary, never the exit status.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


class IperfParseError(ValueError):
    """The output is not iperf3 JSON (truncated, garbage, another program)."""


def client_argv(
    server: str,
    port: int,
    *,
    duration_s: float,
    bind: str | None = None,
    reverse: bool = False,
    parallel: int = 1,
    omit_s: int = 1,
    connect_timeout_ms: int = 5000,
) -> list[str]:
    argv = [
        "iperf3", "-c", server, "-p", str(int(port)), "-J",
        "-t", str(max(1, int(round(duration_s)))),
        "-P", str(max(1, int(parallel))),
        "--connect-timeout", str(int(connect_timeout_ms)),
    ]
    if omit_s:
        argv += ["-O", str(int(omit_s))]
    if bind:
        argv += ["-B", bind]
    if reverse:
        argv.append("-R")
    return argv


def server_argv(port: int, *, bind: str | None = None, one_off: bool = True) -> list[str]:
    argv = ["iperf3", "-s", "-p", str(int(port)), "-J"]
    if one_off:
        argv.append("-1")
    if bind:
        argv += ["-B", bind]
    return argv


@dataclass
class IperfResult:
    error: str | None
    sent_bps: float = 0.0
    received_bps: float = 0.0
    sent_bytes: int = 0
    received_bytes: int = 0
    retransmits: int | None = None
    seconds: float = 0.0
    mss: int | None = None
    local_host: str = ""
    remote_host: str = ""
    version: str = ""
    reverse: bool = False
    intervals_bps: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def throughput_mbps(self) -> float:
        """Goodput as the receiver saw it (what the link actually delivered)."""
        return self.received_bps / 1e6

    @property
    def retransmit_pct(self) -> float | None:
        """Retransmitted segments as a share of segments sent (needs the MSS)."""
        if self.retransmits is None or not self.sent_bytes:
            return None
        segments = self.sent_bytes / (self.mss or 1448)
        return 100.0 * self.retransmits / max(segments, 1.0)


def _doc(text: str) -> dict[str, Any]:
    text = text.strip()
    if not text:
        raise IperfParseError("iperf3 printed nothing")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise IperfParseError(f"iperf3 output is not JSON: {exc.msg} at char {exc.pos}") from None
    if not isinstance(doc, dict) or "start" not in doc:
        raise IperfParseError("iperf3 JSON lacks the 'start' object")
    return doc


def parse(text: str) -> IperfResult:
    """Parse one ``iperf3 -J`` document (client or server side)."""
    doc = _doc(text)
    start = doc.get("start") or {}
    end = doc.get("end") or {}
    version = str(start.get("version", ""))
    connected = (start.get("connected") or [{}])[0] if start.get("connected") else {}
    error = doc.get("error")
    res = IperfResult(
        error=str(error) if error else None,
        version=version,
        local_host=str(connected.get("local_host", "")),
        remote_host=str(connected.get("remote_host", "")),
        reverse=bool((start.get("test_start") or {}).get("reverse", 0)),
    )
    if res.error:
        return res
    sent = end.get("sum_sent") or {}
    received = end.get("sum_received") or {}
    if not sent and not received:
        # UDP puts its totals in end.sum; a TCP run without them never finished
        res.error = "iperf3 produced no end-of-test summary (test did not complete)"
        return res
    res.sent_bps = float(sent.get("bits_per_second", 0.0))
    res.received_bps = float(received.get("bits_per_second", 0.0))
    res.sent_bytes = int(sent.get("bytes", 0))
    res.received_bytes = int(received.get("bytes", 0))
    res.seconds = float(received.get("seconds", sent.get("seconds", 0.0)))
    if "retransmits" in sent:
        res.retransmits = int(sent["retransmits"])
    mss = start.get("tcp_mss_default") or start.get("tcp_mss")
    res.mss = int(mss) if mss else None
    for iv in doc.get("intervals") or []:
        s = (iv or {}).get("sum") or {}
        if not s.get("omitted") and "bits_per_second" in s:
            res.intervals_bps.append(float(s["bits_per_second"]))
    if res.received_bps <= 0:
        res.error = "iperf3 reported zero throughput"
    return res
