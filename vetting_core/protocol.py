"""The agent ↔ orchestrator wire protocol (seed 001, "Agent ↔ orchestrator protocol").

Every request and response body is one of these Structs, encoded as JSON. The agent
authenticates every ``/api/v1/runs/{id}/*`` call with ``Authorization: Bearer <token>``,
the per-run token shown once when the run is created and put on the kernel command
line by the iPXE script as ``vetting.token=…`` (with ``vetting.server=`` and
``vetting.run=``).

Routes::

    GET  /ipxe/{mac}                      → text/plain iPXE script for that MAC
    POST /api/v1/runs/{id}/hello          Hello        → HelloReply
    POST /api/v1/runs/{id}/claim          Claim        → ClaimReply
    POST /api/v1/runs/{id}/heartbeat      Heartbeat    → HeartbeatReply
    POST /api/v1/runs/{id}/log            LogBatch     → BatchAck
    POST /api/v1/runs/{id}/sensor         SensorBatch  → BatchAck
    POST /api/v1/runs/{id}/result         StageResult  → ResultReply
    POST /api/v1/runs/{id}/hold           HoldRequest  → HoldReply
    POST /api/v1/runs/{id}/artifact       ArtifactUpload → ArtifactAck  (a stage's raw tool output)
    POST /api/v1/runs/{id}/peer           PeerRequest  → PeerReply     (lease a test peer)
    POST /api/v1/runs/{id}/peer/release   PeerRelease  → PeerReleaseReply
    POST /api/v1/agents/heartbeat         HostHeartbeat → HostHeartbeatReply  (host mode,
                                          authenticated with the host's agent token)

Log and sensor batches carry a per-stream sequence number starting at 1: the server
stores a batch once and acknowledges a retried one with ``duplicate=True``. A
``StageResult`` is idempotent: posting the same result twice returns the same reply
and advances the run once; a different result for a finished stage gets 409.

Run states travel as ``str`` (``HelloReply.state``, ``HeartbeatReply.state``,
``ResultReply.next_state``), holding a :class:`~vetting_core.statemachine.RunState`
value. They are not typed ``RunState``: msgspec would then publish an ``enum`` in the
OpenAPI document (a changed document), and an older agent would refuse a reply naming
a state it does not know instead of carrying on. ``RunState`` is a ``str`` enum, so
code compares these fields with it and tests them against its groups directly.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from .model import INT64_MAX, Artifact, Count, FirmwareSnapshot, Measurement, SubStep, ThresholdRule, Verdict

PROTOCOL_VERSION = 1

# Bounds of what the server accepts, in the Structs so that decoding checks them (with
# the field's path in the error) and the OpenAPI document shows them. Integers are
# kept to the range of the column they land in; list lengths are far above what a
# body within ``server.max_agent_body_bytes`` can hold, and stop an operator-sized
# body (16 MiB) from carrying millions of rows.
Seq = Annotated[int, Meta(ge=1, le=INT64_MAX)]  # batches.seq (BIGINT); numbered from 1 per stream
SeqRef = Annotated[int, Meta(ge=0, le=INT64_MAX)]  # a seq or 0 (none yet)
Fraction = Annotated[float, Meta(ge=0.0, le=1.0)]
MAX_BATCH_ITEMS = 100_000
MAX_RESULT_ITEMS = 100_000
MAX_LIST = 10_000
MAX_GAPS = 100  # gap ranges listed in a ClaimReply per stream

KERNEL_PARAM_SERVER = "vetting.server"
KERNEL_PARAM_RUN = "vetting.run"
KERNEL_PARAM_TOKEN = "vetting.token"


class Hello(msgspec.Struct, kw_only=True):
    agent_version: str
    hostname: str
    ip: str | None = None
    mac: str | None = None
    boot_id: str = ""
    mode: Literal["pxe", "connect", "host"] = "connect"
    protocol: Annotated[int, Meta(ge=0, le=1 << 31)] = PROTOCOL_VERSION


class HelloReply(msgspec.Struct, kw_only=True):
    run_id: int
    state: str  # a RunState value (see vetting_core.statemachine)
    server_time: datetime


class Claim(msgspec.Struct, kw_only=True):
    agent_version: str
    hostname: str
    stages_installed: Annotated[list[str], Meta(max_length=MAX_LIST)] = []


class PlannedStage(msgspec.Struct, kw_only=True):
    name: str
    ordinal: int
    params: dict[str, Any] = {}
    runs_on: Literal["agent", "orchestrator"] = "agent"
    destructive: bool = False
    timeout_s: float = 3600.0
    state: Verdict = Verdict.pending  # a resumed run reports what is already done


class ClaimReply(msgspec.Struct, kw_only=True):
    run_id: int
    host_name: str
    profile: str
    non_destructive: bool
    stages: list[PlannedStage]
    thresholds: list[ThresholdRule] = []
    expected_spec: dict[str, Any] | None = None
    override_flags: dict[str, Any] = {}
    heartbeat_interval_s: float = 10.0
    heartbeat_timeout_s: float = 60.0
    # per stream: every batch 1..log_seq is stored; ``log_gaps`` lists the missing ranges
    # [first, last] above it (at most MAX_GAPS, lowest first) and ``log_seq_max`` is the
    # highest stored: a resumed agent resends the gaps and numbers new batches after the max
    log_seq: int = 0
    sensor_seq: int = 0
    log_seq_max: int = 0
    sensor_seq_max: int = 0
    log_gaps: list[tuple[int, int]] = []
    sensor_gaps: list[tuple[int, int]] = []
    max_batch_bytes: int = 1 << 20
    max_artifact_bytes: int = 16 << 20  # larger artifacts stay on the machine (listed, not uploaded)


class Heartbeat(msgspec.Struct, kw_only=True):
    stage: str | None = None
    progress: Fraction | None = None  # 0..1 within the stage
    message: str = ""
    spool_depth: Count = 0
    last_rtt_s: Annotated[float, Meta(ge=0.0, le=86400.0)] | None = None  # round trip of the agent's previous heartbeat (/metrics)


class HeartbeatReply(msgspec.Struct, kw_only=True):
    cmd: Literal["continue", "shutdown", "abort", "retry_stage"]
    state: str  # a RunState value (see vetting_core.statemachine)
    stage: str | None = None  # for retry_stage: the stage to re-enter
    override_flags: dict[str, Any] = {}


class LogLine(msgspec.Struct, kw_only=True, array_like=True, gc=False):  # atomic fields: no cycles
    ts: datetime
    stage: str | None
    level: str
    message: str


class LogBatch(msgspec.Struct, kw_only=True):
    seq: Seq
    lines: Annotated[list[LogLine], Meta(max_length=MAX_BATCH_ITEMS)]


class SensorBatch(msgspec.Struct, kw_only=True):
    seq: Seq
    samples: Annotated[list[Measurement], Meta(max_length=MAX_BATCH_ITEMS)]


class BatchAck(msgspec.Struct, kw_only=True):
    seq: int
    stored: int
    duplicate: bool = False
    breaches: int = 0


class StageResult(msgspec.Struct, kw_only=True):
    stage: str
    verdict: Verdict
    reason: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    summary: dict[str, Any] = {}
    substeps: Annotated[list[SubStep], Meta(max_length=MAX_LIST)] = []
    measurements: Annotated[list[Measurement], Meta(max_length=MAX_RESULT_ITEMS)] = []
    inventory: dict[str, Any] | None = None
    firmware: Annotated[list[FirmwareSnapshot], Meta(max_length=MAX_LIST)] = []
    artifacts: Annotated[list[Artifact], Meta(max_length=MAX_LIST)] = []
    log_seq: SeqRef = 0  # last log batch sent before this result
    sensor_seq: SeqRef = 0
    hold: bool = False  # the stage asks the orchestrator for a hold (wipe probe found data)


class ArtifactUpload(msgspec.Struct, kw_only=True):
    """One artifact file (a tool's raw output), sent before the stage result that lists
    it, so the operator still has it after the live image powers off. ``content`` is
    base64 in JSON; the server checks it against ``artifact.sha256``."""

    artifact: Artifact
    content: bytes


class ArtifactAck(msgspec.Struct, kw_only=True):
    sha256: str
    stored: bool  # False: this run already had it (a retried upload)


class PeerRequest(msgspec.Struct, kw_only=True):
    """Lease a test peer the orchestrator supervises (``kind="iperf3"``: a one-shot
    iperf3 server on a port of its pool, one client at a time per port)."""

    kind: str
    stage: str | None = None


class PeerReply(msgspec.Struct, kw_only=True):
    kind: str
    host: str  # where the agent connects (``peers.host``, else the address it reached the server at)
    port: int
    lease_id: str
    expires_in_s: float  # the lease is reaped after this long even if never released


class PeerRelease(msgspec.Struct, kw_only=True):
    lease_id: str


class PeerReleaseReply(msgspec.Struct, kw_only=True):
    released: bool  # False: already released or reaped (releasing twice is harmless)


class Breach(msgspec.Struct, kw_only=True):
    stage: str
    kind: str
    key: str
    op: str
    threshold: float | str
    observed: float | str | None
    severity: str


class ResultReply(msgspec.Struct, kw_only=True):
    stage: str
    verdict: Verdict  # the orchestrator's verdict (a critical breach fails a "passed" stage)
    reason: str | None = None
    next_state: str  # a RunState value (see vetting_core.statemachine)
    next_stage: str | None = None
    hold: bool = False  # the agent should call /hold
    breaches: list[Breach] = []
    # set when the run failed now: the stage that failed it (this one, or an
    # orchestrator-owned stage run right after it, e.g. SpecValidate) and the run's reason
    failed_stage: str | None = None
    run_reason: str | None = None


class HoldRequest(msgspec.Struct, kw_only=True):
    ip: str
    reason: str = ""


class HoldReply(msgspec.Struct, kw_only=True):
    authorized_key: str
    expires_at: datetime
    user: str = "root"
    ssh_command: str = ""


class HostHeartbeat(msgspec.Struct, kw_only=True):
    hostname: str
    agent_version: str
    ip: str | None = None
    busy: bool = False  # a run is in progress on this host


class HostHeartbeatReply(msgspec.Struct, kw_only=True):
    cmd: Literal["idle", "run"]
    run_id: int | None = None
    run_token: str | None = None
    poll_interval_s: float = 10.0


class ErrorBody(msgspec.Struct, kw_only=True):
    """Every API error: a status code and a message a person can act on."""

    status_code: int
    detail: str
    extra: dict[str, Any] | list[Any] | None = None
