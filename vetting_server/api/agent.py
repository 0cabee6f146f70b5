"""The agent-facing routes (seed 001, "Agent ↔ orchestrator protocol").

Bodies are the Structs of :mod:`vetting_core.protocol`. Every ``/api/v1/runs/{id}/*``
route authenticates with the run's bearer token (see :mod:`.auth`); request bodies
are limited to ``server.max_agent_body_bytes`` (413 beyond).
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.params import JSONBody, Parameter

from vetting_core.protocol import (
    ArtifactAck,
    ArtifactUpload,
    BatchAck,
    Claim,
    ClaimReply,
    Heartbeat,
    HeartbeatReply,
    Hello,
    HelloReply,
    HoldReply,
    HoldRequest,
    HostHeartbeat,
    HostHeartbeatReply,
    LogBatch,
    PeerRelease,
    PeerReleaseReply,
    PeerReply,
    PeerRequest,
    ResultReply,
    SensorBatch,
    StageResult,
)
from vetting_core.statemachine import heartbeat_command

from ..runs.artifacts import store_artifact
from .auth import agent_auth, agent_guard, bearer, host_agent_guard, runtime
from ..db.database import utcnow
from ..edge.routes import EdgeRoute
from ..edge.fastbody import FastBody
from ..errors import ApiError, forbidden, unauthorized
from .limits import PathId
from ..security import token_hash
from ..runs.tokens import issue_run_token

RUN = "/api/v1/runs/{run_id:int}"


def _peer(request: Request) -> str | None:
    return request.client.host if request.client else None


def heartbeat_reply(rt: Any, run_id: int, auth: Any, data: Heartbeat) -> HeartbeatReply:
    """Record the heartbeat (memory only) and say what the agent should do."""
    now = utcnow()
    rt.heartbeats[run_id] = now
    rt.last_heartbeat[run_id] = now
    if data.last_rtt_s is not None and 0 <= data.last_rtt_s < 3600:
        rt.metrics.heartbeat_latency.observe(data.last_rtt_s)
    if data.stage is not None or data.progress is not None:
        pct = None if data.progress is None else round(float(data.progress) * 100)
        prev = rt.hub.progress.get(run_id)
        if prev is None or prev.get("stage") != data.stage or prev.get("percent") != pct or prev.get("message") != data.message:
            rt.hub.set_progress(run_id, {"run_id": run_id, "stage": data.stage, "percent": pct, "message": data.message[:200]})
    # the retry is pending until the agent reports it is running the stage again
    retry = auth.retry_stage is not None and data.stage != auth.retry_stage
    cmd = heartbeat_command(auth.state, retry_pending=retry)
    return HeartbeatReply(
        cmd=cmd.value, state=auth.state,
        stage=auth.retry_stage if retry else None,
        override_flags=auth.override_flags if retry else {},
    )


async def sensor_ack(rt: Any, run_id: int, auth: Any, data: SensorBatch) -> BatchAck:
    try:
        stored, dup, breaches = await rt.ingest.sensor(run_id, data.seq, data.samples)
    except TypeError as exc:  # e.g. naive and aware timestamps mixed in one batch
        raise ApiError(422, f"samples: {exc}; give every ts a timezone (UTC 'Z')", {"field": "samples"}) from None
    return BatchAck(seq=data.seq, stored=stored, duplicate=dup, breaches=breaches)


async def log_ack(rt: Any, run_id: int, auth: Any, data: LogBatch) -> BatchAck:
    stored, dup = await rt.ingest.logs(run_id, data.seq, data.lines)
    return BatchAck(seq=data.seq, stored=stored, duplicate=dup)


# answered before routing (edge.py); the handlers below document them and serve the
# paths' other spellings (a trailing slash)
EDGE_ROUTES = {
    "heartbeat": EdgeRoute(msgspec.json.Decoder(Heartbeat), heartbeat_reply, allow_finished=True, sync=True),
    "sensor": EdgeRoute(msgspec.json.Decoder(SensorBatch), sensor_ack),
    "log": EdgeRoute(msgspec.json.Decoder(LogBatch), log_ack),
}


class AgentController(Controller):
    path = ""
    tags = ["agent"]
    guards = [agent_guard]

    @post(RUN + "/hello", status_code=200, summary="Agent booted", dto=FastBody[Hello], return_dto=None)
    async def hello(self, request: Request, run_id: PathId, data: JSONBody[Hello]) -> HelloReply:
        await agent_auth(request, run_id)
        return await runtime(request).service.hello(run_id, data, _peer(request))

    @post(RUN + "/claim", status_code=200, summary="Claim the run: the stage plan", dto=FastBody[Claim], return_dto=None)
    async def claim(self, request: Request, run_id: PathId, data: JSONBody[Claim]) -> ClaimReply:
        await agent_auth(request, run_id)
        return await runtime(request).service.claim(run_id, data)

    @post(RUN + "/heartbeat", status_code=200, summary="Liveness; the reply carries cmd", opt={"allow_finished": True},
          dto=FastBody[Heartbeat], return_dto=None)
    async def heartbeat(self, request: Request, run_id: PathId, data: JSONBody[Heartbeat]) -> HeartbeatReply:
        auth = await agent_auth(request, run_id, allow_finished=True)
        return heartbeat_reply(runtime(request), run_id, auth, data)

    @post(RUN + "/log", status_code=200, summary="A batch of log lines", dto=FastBody[LogBatch], return_dto=None)
    async def log(self, request: Request, run_id: PathId, data: JSONBody[LogBatch]) -> BatchAck:
        return await log_ack(runtime(request), run_id, await agent_auth(request, run_id), data)

    @post(RUN + "/sensor", status_code=200, summary="A batch of samples: judged and stored", dto=FastBody[SensorBatch],
          return_dto=None)
    async def sensor(self, request: Request, run_id: PathId, data: JSONBody[SensorBatch]) -> BatchAck:
        return await sensor_ack(runtime(request), run_id, await agent_auth(request, run_id), data)

    @post(RUN + "/result", status_code=200, summary="A stage result (idempotent)", dto=FastBody[StageResult], return_dto=None)
    async def result(self, request: Request, run_id: PathId, data: JSONBody[StageResult]) -> ResultReply:
        await agent_auth(request, run_id)
        return await runtime(request).service.result(run_id, data)

    @post(RUN + "/hold", status_code=200, summary="Open a hold: receive an SSH key to authorize", dto=FastBody[HoldRequest],
          return_dto=None)
    async def hold(self, request: Request, run_id: PathId, data: JSONBody[HoldRequest]) -> HoldReply:
        await agent_auth(request, run_id)
        return await runtime(request).service.hold(run_id, data, _peer(request))

    @post(RUN + "/peer", status_code=200, summary="Lease a test peer (an iperf3 server port) for one test",
          dto=FastBody[PeerRequest], return_dto=None)
    async def peer(self, request: Request, run_id: PathId, data: JSONBody[PeerRequest]) -> PeerReply:
        await agent_auth(request, run_id)
        return await runtime(request).peers.lease(run_id, data.kind, request.url.hostname or "127.0.0.1")

    @post(RUN + "/peer/release", status_code=200, summary="Give a test peer back", opt={"allow_finished": True},
          dto=FastBody[PeerRelease], return_dto=None)
    async def release_peer(self, request: Request, run_id: PathId, data: JSONBody[PeerRelease]) -> PeerReleaseReply:
        await agent_auth(request, run_id, allow_finished=True)
        return PeerReleaseReply(released=await runtime(request).peers.release(run_id, data.lease_id))

    @post("/api/v1/agents/heartbeat", status_code=200, summary="Host-mode agent poll (host token)", guards=[host_agent_guard],
          dto=FastBody[HostHeartbeat], return_dto=None)
    async def host_heartbeat(self, request: Request, data: JSONBody[HostHeartbeat]) -> HostHeartbeatReply:
        rt = runtime(request)
        token = bearer(request)
        if token is None:
            raise unauthorized("missing host agent token: send 'Authorization: Bearer <host agent token>'")
        h = token_hash(token)
        host = await rt.db.fetchrow("SELECT id, name FROM hosts WHERE agent_token_hash = $1", h)
        if host is None:
            if await rt.db.fetchval("SELECT id FROM runs WHERE agent_token_hash = $1", h) is not None:
                raise forbidden("this is a run token; host-mode polling needs the host's agent token")
            raise unauthorized("invalid host agent token")
        host_id = int(host["id"])
        now = utcnow()
        rt.host_seen[host_id] = (now, (data.ip or _peer(request) or "")[:100] or None, data.agent_version[:100])
        poll = rt.settings.timeouts.heartbeat_interval_s
        if data.busy:
            return HostHeartbeatReply(cmd="idle", poll_interval_s=poll)
        run = await rt.db.fetchrow(
            "SELECT id, agent_token_hash FROM runs WHERE host_id = $1 AND state IN ('Queued', 'WaitingBoot', 'Booting', 'Running') "
            "ORDER BY id LIMIT 1",
            host_id,
        )
        if run is None:
            return HostHeartbeatReply(cmd="idle", poll_interval_s=poll)
        run_token, run_token_hash = issue_run_token()
        async with rt.unit() as u:
            n = await u.tx.execute(
                # a token the host's own (authenticated) agent asked for: the new hello binds it afresh
                "UPDATE runs SET agent_token_hash = $3, agent_boot_id = NULL, agent_peer = NULL, version = version + 1, "
                "changed_at = $4 WHERE id = $1 AND agent_token_hash = $2",
                int(run["id"]), run["agent_token_hash"], run_token_hash, rt.changed_now(),
            )
            if n == 1:
                u.fx.runs.add(int(run["id"]))
                await u.event("agent", f"run token issued to the host-mode agent on {host['name']} ({data.hostname})",
                              run_id=int(run["id"]), host_id=host_id)
        if n != 1:
            return HostHeartbeatReply(cmd="idle", poll_interval_s=1.0)  # a concurrent poll took it
        return HostHeartbeatReply(cmd="run", run_id=int(run["id"]), run_token=run_token, poll_interval_s=poll)

    @get("/ipxe/{mac:str}", summary="Per-MAC iPXE script (the run token, once per boot window)", media_type="text/plain")
    async def ipxe(self, request: Request, mac: str = Parameter(description="the booting NIC's MAC")) -> Response[str]:
        script = await runtime(request).netboot.ipxe(mac, _peer(request))
        return Response(script, media_type="text/plain", headers={"Cache-Control": "no-store"})


class ArtifactController(Controller):
    """Artifact uploads: their own body limit (``server.max_artifact_bytes``, base64)."""

    path = ""
    tags = ["agent"]
    guards = [agent_guard]

    @post(RUN + "/artifact", status_code=200, summary="Upload an artifact file (before the result that lists it)",
          dto=FastBody[ArtifactUpload], return_dto=None)
    async def artifact(self, request: Request, run_id: PathId, data: JSONBody[ArtifactUpload]) -> ArtifactAck:
        auth = await agent_auth(request, run_id)
        return await store_artifact(runtime(request), run_id, auth.state, data)


def artifact_body_limit(max_artifact_bytes: int) -> int:
    """Base64 grows a file by 4/3; the JSON envelope adds the artifact's metadata."""
    return max_artifact_bytes * 4 // 3 + (64 << 10)
