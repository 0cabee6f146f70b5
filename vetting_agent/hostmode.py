"""Host mode: an installed machine that polls the orchestrator for work.

``POST /api/v1/agents/heartbeat`` (authenticated with the host's agent token) keeps
``hosts.last_seen_at`` fresh and answers ``idle`` or ``run`` with a run id and that
run's token; the agent then drives the run exactly like ``connect`` mode, except that
it never runs a destructive stage (the machine is in use: its disks hold data). While
a run is in progress the poll goes on with ``busy=True``.
"""

from __future__ import annotations

import socket

import anyio
import structlog

from vetting_core.plugins import Registry
from vetting_core.protocol import HostHeartbeat

from . import AGENT_VERSION
from .backoff import Backoff, jittered
from .client import AgentClient, AuthRejected, Rejected, Unreachable
from .cmdline import RunCoordinates
from .netinfo import source_ip_for
from .session import AgentOptions, Outcome, run_connected

log = structlog.get_logger()


async def run_host(
    server: str,
    token: str,
    registry: Registry,
    options: AgentOptions,
    *,
    once: bool = False,
    max_idle_s: float | None = None,
) -> int:
    """Poll forever (or until one run ends with ``once``). Returns an exit status."""
    options.non_destructive_only = True
    options.allow_hold = False
    hostname = socket.gethostname()
    ip = source_ip_for(server)
    state: dict[str, object] = {"busy": False, "run": None, "outcome": None}
    backoff = Backoff(options.backoff_initial_s, options.backoff_cap_s)
    started = anyio.current_time()

    async with AgentClient(server, token, timeout=options.http_timeout_s, transport=options.transport) as client:
        async with anyio.create_task_group() as tg:

            async def drive(run_id: int, run_token: str) -> None:
                try:
                    outcome: Outcome = await run_connected(
                        RunCoordinates(server=server, run_id=run_id, token=run_token), registry, options, mode="host"
                    )
                    state["outcome"] = outcome
                    log.info("host.run_done", run=run_id, passed=outcome.passed, reason=outcome.reason)
                finally:
                    state["busy"] = False
                    if once:
                        tg.cancel_scope.cancel()

            while True:
                try:
                    reply = await client.host_heartbeat(
                        HostHeartbeat(hostname=hostname, agent_version=AGENT_VERSION, ip=ip, busy=bool(state["busy"]))
                    )
                except Unreachable as exc:
                    delay = backoff.next()
                    log.warning("host.unreachable", error=str(exc), retry_in=round(delay, 1))
                    await anyio.sleep(delay)
                    continue
                except (AuthRejected, Rejected) as exc:
                    log.error("host.refused", error=str(exc))
                    return 2
                backoff.reset()
                if reply.cmd == "run" and not state["busy"]:
                    if reply.run_id is None or not reply.run_token:
                        log.error("host.bad_run_command", run=reply.run_id)
                    elif reply.run_id != state["run"]:
                        log.info("host.run", run=reply.run_id)
                        state["busy"], state["run"] = True, reply.run_id
                        tg.start_soon(drive, reply.run_id, reply.run_token)
                if (
                    once
                    and max_idle_s is not None
                    and state["run"] is None
                    and anyio.current_time() - started > max_idle_s
                ):
                    log.error("host.no_run", waited_s=max_idle_s)
                    return 2
                await anyio.sleep(jittered(max(0.2, reply.poll_interval_s), 0.1))
    outcome = state["outcome"]
    return outcome.exit_code if isinstance(outcome, Outcome) else 1
