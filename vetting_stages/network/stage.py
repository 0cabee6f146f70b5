"""Network: iperf3 throughput per NIC against a peer, retransmits, NIC error counters.

Parameters:

- ``server``: a fixed peer's address (with ``port``, default 5201). Unset in a run
  driven by an orchestrator: every test leases a port of the orchestrator's pool of
  one-shot iperf3 servers (``ctx.peer("iperf3")``, one client per port), so several
  runs never share an iperf3 server. Unset without an orchestrator (local mode), or
  ``"local"``/a loopback address: the stage starts its own one-shot servers on
  loopback (``local_ports``) and can only measure ``lo`` — physical NICs are
  sub-steps skipped with "no peer". Busy/refused connections are retried for
  ``connect_retry_s``.
- ``nics``: names to test (default: every non-virtual NIC with link up in the inventory).
- ``duration_s``, ``parallel`` (streams), ``reverse`` (also measure receive).
- ``min_link_ratio``: throughput must reach this share of the negotiated speed.
- ``min_mbps``: absolute floor (also ``spec.performance.network_mbps``).
- ``max_retransmit_pct``: retransmitted share of segments.

NIC error counters (``ethtool -S`` names with err/drop/crc/...) are sampled before
and after each NIC's test; any growth fails the NIC (``nic_counter``, ``delta_lte 0``).

A NIC is judged only on traffic that really crossed it: before each test the peer's
address must not be one of this machine's own (an orchestrator whose iperf3 pool runs
on the host under test would otherwise measure loopback, tens of Gbit/s, and credit it
to the NIC), and the kernel's route to the peer (``ip route get PEER from BIND``) must
leave through that NIC. Otherwise the NIC's sub-step is skipped with the reason, as in
local mode.
"""

from __future__ import annotations

import ipaddress
import json
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from vetting_core.context import PeerUnavailable, StageContext, StageSkipped, SubStepHandle
from vetting_core.model import Severity, ThresholdRule
from vetting_core.records import StageSpec
from vetting_core.tools import ToolNotFound, run_tool

from . import ethtool
from .iperf import IperfParseError, IperfResult, client_argv, parse
from .iperf_server import IperfServerPool

_RETRYABLE = ("server is busy", "Connection refused", "unable to connect", "No route to host")


def _is_local(server: Any) -> bool:
    if server in (None, "", "local", "localhost"):
        return True
    try:
        return ipaddress.ip_address(str(server)).is_loopback
    except ValueError:
        return False


def link_speed_mbps(nic: str, inventory_nic: dict | None, sys_root: str = "/sys/class/net") -> int | None:
    if inventory_nic and inventory_nic.get("speed_mbps"):
        return int(inventory_nic["speed_mbps"])
    try:
        speed = int(Path(sys_root, nic, "speed").read_text().strip())
    except (OSError, ValueError):
        return None
    return speed if speed > 0 else None


async def ipv4_of(nic: str) -> str | None:
    try:
        res = await run_tool(["ip", "-j", "-4", "addr", "show", "dev", nic], timeout=10)
    except ToolNotFound:
        return None
    try:
        for link in json.loads(res.stdout or "[]"):
            for addr in link.get("addr_info", []):
                if addr.get("family") == "inet":
                    return str(addr["local"])
    except (ValueError, AttributeError, KeyError):
        return None
    return None


async def local_addresses() -> set[str] | None:
    """Every address assigned to this machine (any interface, loopback included), or
    ``None`` when ``ip`` cannot tell."""
    try:
        res = await run_tool(["ip", "-j", "addr", "show"], timeout=10)
        links = json.loads(res.stdout or "[]")
    except (ToolNotFound, ValueError):
        return None
    return {str(a["local"]) for link in links for a in link.get("addr_info", []) if a.get("local")}


async def egress_interface(peer: str, bind: str | None) -> str | None:
    """The interface the kernel sends traffic for ``peer`` through (from ``bind``)."""
    argv = ["ip", "-j", "route", "get", peer] + (["from", bind] if bind else [])
    try:
        res = await run_tool(argv, timeout=10)
        routes = json.loads(res.stdout or "[]")
    except (ToolNotFound, ValueError):
        return None
    return str(routes[0].get("dev")) if routes and isinstance(routes[0], dict) and routes[0].get("dev") else None


def path_problem(nic: str, peer: str, local: set[str] | None, egress: str | None) -> str | None:
    """Why a test against ``peer`` would not exercise ``nic`` (None: it would).

    The peer must not be this machine, and the route to it must leave through ``nic``
    when the kernel can say which interface it uses."""
    try:
        addr = ipaddress.ip_address(peer)
    except ValueError:
        addr = None
    if (addr is not None and addr.is_loopback) or (local is not None and peer in local):
        return (f"the iperf3 peer {peer} is an address of this machine: the traffic would stay on "
                f"loopback and cannot exercise {nic}")
    if egress is not None and egress != nic:
        return f"traffic to the iperf3 peer {peer} leaves through {egress}, not {nic}"
    return None


async def nic_error_counters(nic: str) -> dict[str, int] | None:
    try:
        res = await run_tool(["ethtool", "-S", nic], timeout=15)
    except ToolNotFound:
        return None
    if res.returncode != 0 and "no stats available" not in (res.stdout + res.stderr):
        return None
    return ethtool.error_counters(ethtool.parse_stats(res.stdout))


async def _client(ctx: StageContext, argv: list[str], duration: float, retry_s: float, tag: str) -> IperfResult:
    deadline = anyio.current_time() + retry_s
    while True:
        res = await ctx.run_tool(argv, timeout=duration + 60)
        try:
            result = parse(res.stdout)
        except IperfParseError as exc:
            result = IperfResult(error=f"{exc} (exit {res.returncode}; {res.stderr.strip()[:200]})")
        if result.ok or not any(s in (result.error or "") for s in _RETRYABLE):
            break
        if anyio.current_time() >= deadline:
            break
        ctx.log(f"iperf3 {tag}: {result.error}; retrying", level="warning")
        await anyio.sleep(1.0)
    ctx.save_text("iperf3-json", f"iperf3-{tag}.json", res.stdout)
    return result


def _record(ctx: StageContext, nic: str, direction: str, r: IperfResult, speed: int | None, step: SubStepHandle) -> list[str]:
    p = ctx.params
    problems: list[str] = []
    key = f"{nic}/{direction}"
    mbps = r.throughput_mbps
    ctx.measure("network", f"{key}/throughput_mbps", mbps, "Mbit/s")
    entry: dict[str, Any] = {"throughput_mbps": round(mbps, 1)}
    if r.retransmits is not None:
        ctx.measure("network", f"{key}/retransmits", r.retransmits, "segments")
        pct = r.retransmit_pct or 0.0
        ctx.measure("network", f"{key}/retransmit_pct", pct, "%")
        entry.update(retransmits=r.retransmits, retransmit_pct=round(pct, 4))
        limit = p.get("max_retransmit_pct")
        if limit is not None and pct > float(limit):
            problems.append(f"{direction}: {pct:.3f}% of segments retransmitted (max {limit}%)")
    if speed:
        ratio = mbps / speed
        ctx.measure("network", f"{key}/link_ratio", ratio, "ratio")
        entry.update(link_speed_mbps=speed, link_ratio=round(ratio, 4))
        floor = p.get("min_link_ratio")
        if floor is not None and ratio < float(floor):
            problems.append(
                f"{direction}: {mbps:.0f} Mbit/s is {ratio:.0%} of the {speed} Mbit/s link (minimum {float(floor):.0%})"
            )
    min_mbps = p.get("min_mbps") or ((ctx.spec or {}).get("performance") or {}).get("network_mbps")
    if min_mbps and nic != "lo" and mbps < float(min_mbps):
        problems.append(f"{direction}: {mbps:.0f} Mbit/s below the expected {float(min_mbps):.0f} Mbit/s")
    step.summary[direction] = entry
    return problems


async def _test_nic(
    ctx: StageContext, nic: str, inv: dict | None, peer_for, bind: str | None, check_path: bool = False
) -> None:
    """One NIC's sub-step; ``peer_for()`` is an async context manager giving (host, port)
    for one test and taking it back after. ``check_path``: skip the NIC when the peer
    is this machine or the route to it leaves through another interface."""
    p = ctx.params
    duration = float(p.get("duration_s", 10))
    directions = ["send", "receive"] if p.get("reverse", True) else ["send"]
    async with ctx.substep(f"nic:{nic}") as step:
        speed = link_speed_mbps(nic, inv)
        max_speed = (inv or {}).get("max_speed_mbps")
        if speed and max_speed:
            # a 25G port negotiated at 10G is a cabling/optics finding even if iperf3 is happy
            ctx.measure("network", f"{nic}/link_speed_ratio", speed / float(max_speed), "ratio")
            step.summary["link"] = {"speed_mbps": speed, "max_speed_mbps": max_speed}
        before = await nic_error_counters(nic) if nic != "lo" else None
        for k, v in (before or {}).items():
            ctx.measure("nic_counter", f"{nic}/{k}", v, "count")
        problems: list[str] = []
        for direction in directions:
            try:
                async with peer_for() as (host, port):
                    why = path_problem(nic, host, await local_addresses(), await egress_interface(host, bind)) \
                        if check_path else None
                    if why:
                        step.skip(why)
                        return
                    argv = client_argv(
                        host, port, duration_s=duration, bind=bind,
                        reverse=direction == "receive", parallel=int(p.get("parallel", 4)),
                    )
                    r = await _client(ctx, argv, duration, float(p.get("connect_retry_s", 30)), f"{nic}-{direction}")
            except PeerUnavailable as exc:
                step.skip(f"no iperf3 peer: {exc}")
                return
            if not r.ok:
                problems.append(f"{direction}: iperf3 failed: {r.error}")
                continue
            problems += _record(ctx, nic, direction, r, speed, step)
        if before is not None:
            after = await nic_error_counters(nic) or {}
            for k, v in after.items():
                ctx.measure("nic_counter", f"{nic}/{k}", v, "count")
            grew = ethtool.deltas(before, after)
            if grew:
                step.summary["counter_deltas"] = grew
                problems.append(f"error counters grew: {grew}")
        elif nic != "lo":
            step.summary["counters"] = "ethtool -S unavailable"
        if problems:
            step.fail("; ".join(problems))


async def run(ctx: StageContext) -> None:
    p = ctx.params
    server = p.get("server")
    leased = server in (None, "") and ctx.peers_available
    local = not leased and _is_local(server)
    inv_nics = {n.get("name"): n for n in ctx.inventory.get("nics", []) if isinstance(n, dict)}
    wanted = p.get("nics")
    if wanted:
        nics = [str(n) for n in wanted]
    else:
        nics = [
            name for name, n in inv_nics.items()
            if name and name != "lo" and not n.get("virtual") and n.get("link") in ("up", "", None)
        ]
    # the progress estimate: one iperf3 test per NIC and direction (loopback only: one NIC)
    tests = (1 if local else max(1, len(nics))) * (2 if p.get("reverse", True) else 1)
    ctx.expect_duration(tests * (float(p.get("duration_s", 10)) + 1))
    if local:
        server = "127.0.0.1" if server in (None, "", "local") else str(server)
        pool = IperfServerPool(p.get("local_ports", range(5201, 5211)), bind=server)
        for nic in nics:
            if nic == "lo":
                continue
            async with ctx.substep(f"nic:{nic}") as step:
                step.skip("no peer server given (params.server); loopback cannot exercise a physical NIC")
        try:

            @asynccontextmanager
            async def peer_for():
                async with pool.lease() as lease:
                    yield server, lease.port

            await _test_nic(ctx, "lo", None, peer_for, None)
        finally:
            await pool.aclose()
    else:
        if not nics:
            raise StageSkipped("no NIC with link up to test (inventory lists none)")
        if leased:

            @asynccontextmanager
            async def peer_for():
                async with ctx.peer("iperf3") as peer:
                    yield peer.host, peer.port
        else:
            fixed = (str(server), int(p.get("port", 5201)))

            @asynccontextmanager
            async def peer_for():
                yield fixed

        for nic in nics:
            bind = await ipv4_of(nic) if p.get("bind", True) else None
            if p.get("bind", True) and bind is None:
                async with ctx.substep(f"nic:{nic}") as step:
                    step.fail("no IPv4 address on the NIC; cannot direct the test through it")
                continue
            await _test_nic(ctx, nic, inv_nics.get(nic), peer_for, bind, check_path=nic != "lo")
    tested = [s for s in ctx.substeps if s.state.value != "skipped"]
    ctx.summary["tested"] = [s.name for s in tested]
    if not tested:
        reasons = sorted({s.reason for s in ctx.substeps if s.reason})
        raise StageSkipped("no NIC could be tested" + (f": {'; '.join(reasons)}" if reasons else ""))


STAGE = StageSpec(
    name="Network",
    run=run,
    order=600,
    description="iperf3 -J per NIC against a peer; throughput vs link speed, retransmits, ethtool -S error deltas.",
    params={
        "*": {
            "server": None,
            "parallel": 4,
            "reverse": True,
            "min_link_ratio": 0.85,
            "max_retransmit_pct": 1.0,
            "connect_retry_s": 30,
        },
        "quick": {"duration_s": 10},
        "deep": {"duration_s": 60},
        "soak": {"duration_s": 120},
    },
    thresholds=(
        ThresholdRule(kind="network", key="*/link_ratio", op="gte", threshold=0.85, unit="ratio"),
        ThresholdRule(kind="network", key="*/retransmit_pct", op="lte", threshold=1.0, unit="%",
                      severity=Severity.warning),
        ThresholdRule(kind="nic_counter", key="*", op="delta_lte", threshold=0, unit="count"),
        ThresholdRule(kind="network", key="*/link_speed_ratio", op="gte", threshold=1.0, unit="ratio",
                      severity=Severity.warning),
    ),
    timeout_s=3600.0,
)
