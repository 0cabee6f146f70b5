"""Test peers the orchestrator supervises for its agents: a pool of one-shot iperf3
servers (``peers`` in the configuration).

An agent's Network stage leases a port (``POST /api/v1/runs/{id}/peer``), runs one
iperf3 client against it and gives it back (``/peer/release``): one client per port
at any time, across every run this process drives, so two hosts under test never
share (and halve) one iperf3 server. A lease that is never given back (the agent
died) is reaped after ``peers.lease_timeout_s``. Each server process has its own
pool: with several replicas, an agent leases from the replica it reaches.

The pool itself comes from the plugin that registers the ``iperf3`` peer kind
(``vetting_peer_pools``; built in: the ``network`` plugin): blocking that plugin
removes the pool and its code from the orchestrator.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping

import anyio
import structlog

from vetting_core.config import PeerSettings, parse_ports
from vetting_core.protocol import PeerReply
from vetting_core.records import PeerLease, PeerPool, PeerPoolSpec
from vetting_core.tools import ToolNotFound, which

from .errors import conflict, not_found, unavailable

log = structlog.get_logger()

MAX_LEASES_PER_RUN = 4
REAP_INTERVAL_S = 5.0


class PeerService:
    def __init__(self, settings: PeerSettings, pools: Mapping[str, PeerPoolSpec]) -> None:
        """``pools``: the registry's peer kinds (``registry.peer_pools``)."""
        self.settings = settings
        self.pool: PeerPool | None = None
        self.why_not = ""
        self.leases: dict[str, tuple[int, PeerLease]] = {}  # lease id → (run id, lease)
        ports = parse_ports(settings.iperf3_ports)
        if not ports:
            self.why_not = "the iperf3 pool is turned off (peers.iperf3_ports is empty)"
            return
        spec = pools.get("iperf3")
        if spec is None:
            self.why_not = "no installed plugin offers iperf3 peers (the network plugin is blocked or not installed)"
            return
        try:
            if spec.tool:
                which(spec.tool)
        except ToolNotFound:
            self.why_not = "iperf3 is not installed on the orchestrator (apt-get install iperf3)"
            return
        self.pool = spec.factory(ports, bind=settings.bind, max_lease_s=settings.lease_timeout_s)

    async def lease(self, run_id: int, kind: str, reached_host: str) -> PeerReply:
        if kind != "iperf3":
            raise not_found(f"no test peer of kind {kind!r} on this orchestrator (it offers: iperf3)")
        if self.pool is None:
            raise not_found(f"no iperf3 peer on this orchestrator: {self.why_not}")
        held = sum(1 for rid, _ in self.leases.values() if rid == run_id)
        if held >= MAX_LEASES_PER_RUN:
            raise conflict(f"run {run_id} already holds {held} iperf3 leases (at most {MAX_LEASES_PER_RUN}); release one first")
        try:
            lease = await self.pool.acquire(timeout=self.settings.wait_s)
        except TimeoutError as exc:  # the pool's PoolExhausted
            raise unavailable(f"{exc}: every iperf3 port is leased; retry") from None
        except OSError as exc:  # a port taken by another program, or iperf3 failed to start
            raise unavailable(f"cannot start an iperf3 server: {exc}; retry") from None
        lease_id = secrets.token_urlsafe(12)
        self.leases[lease_id] = (run_id, lease)
        log.info("peer.leased", run_id=run_id, port=lease.port)
        return PeerReply(kind=kind, host=self.settings.host or reached_host, port=lease.port, lease_id=lease_id,
                         expires_in_s=self.settings.lease_timeout_s)

    async def release(self, run_id: int, lease_id: str) -> bool:
        """Give a lease back; False when it is unknown, reaped already, or another run's."""
        entry = self.leases.get(lease_id)
        if entry is None or entry[0] != run_id:
            return False
        del self.leases[lease_id]
        await entry[1].release()
        log.info("peer.released", run_id=run_id, port=entry[1].port)
        return True

    async def reap(self) -> None:
        """Leases past ``lease_timeout_s`` go back to the pool (a finished one-shot server
        stays leased until its holder releases it: the port is still theirs)."""
        now = time.monotonic()
        for lease_id, (run_id, lease) in list(self.leases.items()):
            if now - lease.started > self.settings.lease_timeout_s:
                log.warning("peer.reaped", run_id=run_id, port=lease.port)
                del self.leases[lease_id]
                await lease.release()

    async def run(self) -> None:
        while self.pool is not None:
            await anyio.sleep(REAP_INTERVAL_S)
            await self.reap()

    async def close(self) -> None:
        self.leases.clear()
        if self.pool is not None:
            await self.pool.aclose()

