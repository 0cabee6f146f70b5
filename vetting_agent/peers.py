"""Test peers leased from the orchestrator: what ``ctx.peer("iperf3")`` does in the
connected modes.

The orchestrator supervises a pool of one-shot iperf3 servers; a lease reserves one
port for one client. While the orchestrator is unreachable (or every port is in use:
503) the lease is retried with backoff, up to ``AgentOptions.peer_wait_s``; a plain
refusal (it offers no peer of that kind: 404) is :class:`PeerUnavailable` at once.
Releasing is best-effort: a lease the agent could not give back is reaped by the
orchestrator when it expires.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import structlog

from vetting_core.context import Peer, Peers, PeerUnavailable
from vetting_core.protocol import PeerRelease, PeerRequest

from .backoff import Backoff
from .client import AgentClient, AuthRejected, ClientError, Rejected, Unreachable

log = structlog.get_logger()


def orchestrator_peers(client: AgentClient, stage: str, *, wait_s: float, backoff: Backoff) -> Peers:
    @asynccontextmanager
    async def lease(kind: str) -> AsyncIterator[Peer]:
        deadline = anyio.current_time() + wait_s
        while True:
            try:
                reply = await client.peer(PeerRequest(kind=kind, stage=stage))
                break
            except (Rejected, AuthRejected) as exc:
                raise PeerUnavailable(exc.detail or str(exc)) from None
            except Unreachable as exc:
                if anyio.current_time() >= deadline:
                    raise PeerUnavailable(f"no {kind} peer from the orchestrator within {wait_s:g} s: {exc}") from None
                delay = backoff.next()
                log.info("peer.retry", kind=kind, error=str(exc), retry_in=round(delay, 1))
                await anyio.sleep(delay)
        backoff.reset()
        try:
            yield Peer(kind=kind, host=reply.host, port=reply.port)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                try:
                    await client.release_peer(PeerRelease(lease_id=reply.lease_id))
                except ClientError as exc:
                    log.warning("peer.release_failed", kind=kind, port=reply.port, error=str(exc))

    return lease
