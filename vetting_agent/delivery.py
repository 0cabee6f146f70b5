"""Delivery: the spool's entries to the orchestrator, oldest first, until the run ends.

Everything the agent produces (log and sensor batches, stage results) is written to
the spool first (:mod:`vetting_agent.spool`); this loop posts each pending entry and
settles it with the orchestrator's answer. An unreachable orchestrator is waited out
with backoff (nothing is dropped); a refused entry (4xx) is settled ``rejected`` and
never retried; a refused token ends delivery — quietly when the run has ended (its
token dies with it; the heartbeat, still accepted, says so), fatally otherwise.
"""

from __future__ import annotations

import contextlib

import anyio
import msgspec
import structlog

from vetting_core.protocol import Heartbeat

from .backoff import Backoff
from .client import AgentClient, AuthRejected, ClientError, Rejected, Unreachable, decode_ack
from .control import AgentFatal, ControlChannel
from .spool import KIND_LOG, KIND_SENSOR, Spool

log = structlog.get_logger()


async def deliver_loop(spool: Spool, client: AgentClient, control: ControlChannel, backoff: Backoff) -> None:
    """Post the spool's pending entries for as long as the run lasts (the caller
    cancels it); returns when the orchestrator refuses the token."""
    failing_since: float | None = None
    while True:
        entry = await spool.next_pending()
        if entry is None:
            await spool.wait_changed(5.0)
            continue
        try:
            body = await client.post_raw(client.run_path(entry.kind), entry.body or b"")
        except Unreachable as exc:
            await spool.note_attempt(entry.id)
            delay = backoff.next()
            now = anyio.current_time()
            if failing_since is None:
                failing_since = now
                log.warning("spool.unreachable", error=str(exc), pending=spool.pending)
            await anyio.sleep(delay)
            continue
        except Rejected as exc:
            await spool.settle(entry.id, state="rejected", error=f"HTTP {exc.status}: {exc.detail}")
            log.error("spool.rejected", kind=entry.kind, seq=entry.seq, stage=entry.stage,
                      items=entry.items, status=exc.status, detail=exc.detail)
            continue
        except AuthRejected as exc:
            if not control.run_ended:
                # a run that ended (cancelled, released) kills its token: the
                # heartbeat, still accepted, says so and carries the command
                with contextlib.suppress(ClientError):
                    control.handle(await client.heartbeat(Heartbeat(stage=control.current_stage)))
            if control.run_ended:
                log.warning("spool.run_ended", state=control.run_state, pending=spool.pending)
                return
            control.die(AgentFatal(f"the orchestrator rejected this agent's token: {exc}"))
            return
        if failing_since is not None:
            log.info("spool.reconnected", after_s=round(anyio.current_time() - failing_since, 1),
                     pending=spool.pending)
            failing_since = None
        backoff.reset()
        if entry.kind in (KIND_LOG, KIND_SENSOR):
            with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                ack = decode_ack(body)
                if ack.seq != entry.seq:
                    log.warning("spool.ack_mismatch", kind=entry.kind, sent=entry.seq, acked=ack.seq)
        await spool.settle(entry.id, state="acked", reply=body)
