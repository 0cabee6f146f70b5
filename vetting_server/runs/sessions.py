"""An agent's session with its run: the first hello binds the run token to the agent
that said it; the claim starts (or resumes) the pipeline and tells the agent its plan."""

from __future__ import annotations

from typing import Any

from vetting_core.model import Verdict
from vetting_core.protocol import Claim, ClaimReply, Hello, HelloReply, PlannedStage
from vetting_core.statemachine import AGENT_ACTIVE, InvalidTransition, RunEventType, RunState, transition

from ..db.database import Database, utcnow
from ..errors import conflict, not_found
from ..ingest.writer import stored_seqs
from ..runtime import Runtime
from .retry import retry_on_conflict
from .rows import jload

E = RunEventType


class AgentSessions:
    """hello and claim: the agent side of a run's start (a mixin of :class:`.service.RunService`)."""

    rt: Runtime
    db: Database

    # ---------------------------------------------------------------- agent: hello / claim
    async def hello(self, run_id: int, body: Hello, peer_ip: str | None) -> HelloReply:
        """The agent booted. The first hello binds the run token to that agent (its boot
        id and source address): a later hello from another boot or address is refused
        (409) and audited, so a copied token cannot take the run over. An agent that
        restarts within the same boot is the same agent."""
        now = utcnow()
        peer = (peer_ip or "")[:100]
        boot_id = body.boot_id[:100]
        fields = dict(
            hello_at=now, last_heartbeat_at=now, agent_version=body.agent_version[:100],
            agent_hostname=body.hostname[:255], agent_ip=(body.ip or peer_ip or "")[:100] or None,
            agent_boot_id=boot_id, agent_peer=peer,
        )

        async def attempt() -> HelloReply | tuple[Any, Any, int]:
            async with self.rt.unit() as u:
                run = await u.tx.fetchrow("SELECT * FROM runs WHERE id = $1", run_id)
                if run is None:
                    raise not_found(f"run {run_id} not found")
                if run["agent_peer"] is not None and (run["agent_boot_id"] or "", run["agent_peer"]) != (boot_id, peer):
                    return (run["agent_boot_id"], run["agent_peer"], int(run["host_id"]))
                try:
                    transition(run["state"], E.hello)
                except InvalidTransition:
                    if run["state"] not in AGENT_ACTIVE:
                        raise conflict(f"run {run_id} is {run['state']}; hello is not accepted") from None
                    cols = list(fields)
                    await u.tx.execute(
                        f"UPDATE runs SET {', '.join(f'{c} = ${i + 2}' for i, c in enumerate(cols))} WHERE id = $1",
                        run_id, *[fields[c] for c in cols],
                    )
                    new = run
                else:
                    new = await self.transition(
                        u, run, E.hello, message=f"agent {body.hostname} said hello ({body.mode} mode, {body.agent_version})",
                        **fields,
                    )
            self.rt.last_heartbeat[run_id] = now
            return HelloReply(run_id=run_id, state=new["state"], server_time=now)

        outcome = await retry_on_conflict(run_id, attempt)
        if isinstance(outcome, HelloReply):
            return outcome
        *bound, host_id = outcome  # the run token is bound to another agent: refused and audited
        text = (f"hello refused: the run token is bound to the agent that said hello first (boot {bound[0] or '?'} "
                f"from {bound[1] or '?'}); this one is boot {boot_id or '?'} from {peer or '?'} ({body.hostname})")
        async with self.rt.unit() as u:
            await u.event("audit.hello_refused", text, run_id=run_id, host_id=host_id, level="warning",
                          data={"peer": peer, "boot_id": boot_id, "hostname": body.hostname[:255],
                                "bound_peer": bound[1], "bound_boot_id": bound[0]})
        raise conflict(text)

    async def claim(self, run_id: int, body: Claim) -> ClaimReply:
        async def attempt() -> None:
            async with self.rt.unit() as u:
                run = await u.tx.fetchrow("SELECT * FROM runs WHERE id = $1", run_id)
                if run is None:
                    raise not_found(f"run {run_id} not found")
                if run["state"] not in (RunState.Booting.value, RunState.Running.value):
                    if run["state"] in (RunState.Queued.value, RunState.WaitingBoot.value):
                        raise conflict(f"run {run_id} is {run['state']}: POST /hello before /claim")
                    raise conflict(f"run {run_id} is {run['state']}; it cannot be claimed")
                first = run["state"] == RunState.Booting.value
                run = await self.transition(
                    u, run, E.claim,
                    message=f"agent {body.hostname} claimed the run" if first else f"agent {body.hostname} resumed the run",
                )
                if first:
                    await self._advance(u, run, after_ordinal=-1)

        await retry_on_conflict(run_id, attempt)
        return await self.claim_reply(run_id)

    async def claim_reply(self, run_id: int) -> ClaimReply:
        db = self.db
        run = await db.fetchrow("SELECT r.*, h.name AS host_name FROM runs r JOIN hosts h ON h.id = r.host_id WHERE r.id = $1", run_id)
        stages = await db.fetch("SELECT * FROM stages WHERE run_id = $1 ORDER BY ordinal", run_id)
        engine = await self.rt.engine(run_id)
        seqs = await stored_seqs(db, run_id)
        log_seq, log_max, log_gaps = seqs.get("log", (0, 0, []))
        sensor_seq, sensor_max, sensor_gaps = seqs.get("sensor", (0, 0, []))
        t = self.rt.settings.timeouts
        return ClaimReply(
            run_id=run_id,
            host_name=run["host_name"],
            profile=run["profile"],
            non_destructive=bool(run["non_destructive"]),
            stages=[
                PlannedStage(
                    name=s["name"], ordinal=int(s["ordinal"]), params=jload(s["params_json"], {}),
                    runs_on=s["runs_on"], destructive=bool(s["destructive"]), timeout_s=float(s["timeout_s"]),
                    state=Verdict(s["state"]),
                )
                for s in stages
            ],
            thresholds=engine.rules,
            expected_spec=jload(run["expected_spec_json"]),
            override_flags=jload(run["override_flags_json"], {}),
            heartbeat_interval_s=t.heartbeat_interval_s,
            heartbeat_timeout_s=t.heartbeat_timeout_s,
            log_seq=log_seq, log_seq_max=log_max, log_gaps=log_gaps,
            sensor_seq=sensor_seq, sensor_seq_max=sensor_max, sensor_gaps=sensor_gaps,
            max_batch_bytes=self.rt.settings.server.max_agent_body_bytes,
            max_artifact_bytes=self.rt.settings.server.max_artifact_bytes,
        )
