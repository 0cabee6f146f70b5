"""Everything one server process holds while it runs: database, caches, hub, buses.

Built by the app factory, opened and closed by the lifespan. Services receive the
:class:`Runtime` explicitly; nothing here is a module global.

The run cache (:class:`RunAuth`) keeps what the agent routes need per request —
token hash, state, pending retry — so a heartbeat costs no database round trip.
It is refreshed from the database every second (other replicas may change runs),
and updated at once by this process's own transitions.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextvars import ContextVar
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import structlog

from vetting_core.config import Settings
from vetting_core.events import RunEvent
from vetting_core.model import Severity, ThresholdRule
from vetting_core.plugins import Registry
from vetting_core.statemachine import ENDED, RunState, sql_states
from vetting_core.thresholds import ThresholdEngine

from .db.database import Database, as_dt, connect_database, utcnow

if TYPE_CHECKING:  # the services import this module: their types only, no import at run time
    import anyio.abc

    from vetting_notifiers.dispatch import NotificationDispatcher

    from .api.login import LoginGuard
    from .boot.netboot import NetBoot
    from .boot.power import PowerControl
    from .firmware.runner import CampaignRunner
    from .firmware.store import FirmwareStore
    from .hosts.service import HostService
    from .ingest.writer import Ingest
    from .metrics import Metrics
    from .peers import PeerService
    from .pxe.supervisor import PxeSupervisor
    from .runs.reporting import Reporting
    from .runs.scheduler import Scheduler
    from .runs.service import RunService
    from .settings_service import RuntimeSettings

log = structlog.get_logger()

HEARTBEAT_GRACE_S = 600.0  # a finished run's agent may still heartbeat this long (to hear shutdown)
AUDIT_SOURCE: ContextVar[dict[str, Any] | None] = ContextVar("audit_source", default=None)
"""Where the request being answered comes from (client address, API or web UI): set when
an operator is authenticated, added to every ``audit.*`` event as ``data.source``."""


@dataclass
class RunAuth:
    run_id: int
    host_id: int
    token_hash: str
    state: str
    version: int
    retry_stage: str | None
    override_flags: dict[str, Any]
    completed_at: datetime | None
    current_stage: str | None


@dataclass
class Effects:
    """What to do after a write transaction commits."""

    events: list[dict[str, Any]] = field(default_factory=list)
    run_events: list[RunEvent] = field(default_factory=list)
    runs: set[int] = field(default_factory=set)
    after: list[Any] = field(default_factory=list)  # async callables


async def write_event(
    tx: Any,
    kind: str,
    message: str,
    *,
    run_id: int | None = None,
    host_id: int | None = None,
    level: str = "info",
    actor: str | None = None,
    data: dict[str, Any] | None = None,
    plan_id: int | None = None,
) -> int:
    """Append one event to the events table inside ``tx``; its id. An ``audit.*`` event
    carries where the request came from (:data:`AUDIT_SOURCE`) as ``data.source``.
    Hand-written SQL: every transition and stage result writes one (see
    :mod:`vetting_server.db.database`)."""
    if kind.startswith("audit.") and (source := AUDIT_SOURCE.get()) is not None:
        data = {**(data or {}), "source": source}
    data_json = None if data is None else msgspec.json.encode(data).decode()
    return int(await tx.fetchval(
        "INSERT INTO events (run_id, host_id, ts, level, kind, message, actor, data_json, plan_id) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
        run_id, host_id, utcnow(), level, kind, message, actor, data_json, plan_id,
    ))


class Unit:
    """A write transaction plus the effects to publish once it has committed."""

    def __init__(self, rt: Runtime, tx: Any) -> None:
        self.rt = rt
        self.tx = tx
        self.fx = Effects()

    async def event(self, kind: str, message: str, **fields: Any) -> int:
        """Append an event (:func:`write_event`); the live streams hear of it after the commit."""
        event_id = await write_event(self.tx, kind, message, **fields)
        run_id, host_id = fields.get("run_id"), fields.get("host_id")
        self.fx.events.append({"id": event_id, "run_id": run_id, "host_id": host_id})
        return int(event_id)


class Hub:
    """In-process wake-up for SSE streams. Streams read the events table (so a
    reconnect resumes with ``Last-Event-ID`` and replicas see each other's events);
    the hub only tells them when to look, and carries ephemeral progress updates."""

    def __init__(self) -> None:
        self._event = anyio.Event()
        self.progress: dict[int, dict[str, Any]] = {}
        self.progress_seq = 0

    def notify(self) -> None:
        self._event.set()
        self._event = anyio.Event()

    def set_progress(self, run_id: int, data: dict[str, Any]) -> None:
        self.progress_seq += 1
        self.progress[run_id] = {**data, "_seq": self.progress_seq}
        self.notify()

    async def wait(self, timeout: float) -> None:
        with anyio.move_on_after(timeout):
            await self._event.wait()


class Runtime:
    """One server process's state: the settings, the plugin registry, the database, the
    per-run caches of the hot path (tokens, heartbeats, threshold engines, stage ids) and
    the services :func:`vetting_server.app.create_app` wires into its typed slots."""

    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry
        db = settings.database
        self.db: Database = connect_database(
            db.url, busy_timeout_ms=db.busy_timeout_ms, pool_min=db.pool_min, pool_max=db.pool_max
        )
        self.data_dir = Path(settings.server.data_dir).resolve()
        self.hub = Hub()
        self.runs: dict[int, RunAuth] = {}
        self.heartbeats: dict[int, datetime] = {}  # not yet flushed to runs.last_heartbeat_at
        self.last_heartbeat: dict[int, datetime] = {}  # what this process saw last
        self.host_seen: dict[int, tuple[datetime, str | None, str | None]] = {}
        self.engines: dict[int, ThresholdEngine] = {}
        self.stage_ids: dict[int, dict[str, int]] = {}
        self.started_at = utcnow()
        self.started_mono = time.monotonic()
        # the services, wired by create_app (None until then: a Runtime built alone has none)
        self.notifier: NotificationDispatcher | None = None  # when vetting_notifiers is installed
        self.tg: anyio.abc.TaskGroup | None = None
        self.dispatch_wake = anyio.Event()
        self.token_use_logged: set[int] = set()
        self.operator_tokens: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self.ingest: Ingest | None = None
        self.metrics: Metrics | None = None  # GET /metrics
        self.service: RunService | None = None
        self.hosts: HostService | None = None
        self.reporting: Reporting | None = None
        self.scheduler: Scheduler | None = None
        self.peers: PeerService | None = None
        self.pxe: PxeSupervisor | None = None
        self.power: PowerControl | None = None
        self.netboot: NetBoot | None = None
        self.firmware: FirmwareStore | None = None
        self.campaigns: CampaignRunner | None = None
        self.login: LoginGuard | None = None
        self.runtime_settings: RuntimeSettings | None = None  # owns self.settings once running
        self._last_full: datetime | None = None
        self._last_refresh: datetime | None = None

    # -- url --------------------------------------------------------------------
    @property
    def public_url(self) -> str:
        s = self.settings.server
        if s.public_url:
            return s.public_url.rstrip("/")
        host = "127.0.0.1" if s.host in ("0.0.0.0", "::", "") else s.host
        return f"{'https' if s.tls.cert else 'http'}://{host}:{s.port}"

    # -- transactions -------------------------------------------------------------
    @asynccontextmanager
    async def unit(self) -> AsyncIterator[Unit]:
        async with self.db.transaction() as tx:
            u = Unit(self, tx)
            yield u
        await self.publish(u.fx)

    async def publish(self, fx: Effects) -> None:
        for run_id in fx.runs:
            await self.refresh_run(run_id)
        if fx.events:
            self.hub.notify()
        for event in fx.run_events:
            await self.emit_run_event(event)
        for fn in fx.after:
            self.spawn(fn)

    def spawn(self, fn: Any) -> None:
        if self.tg is not None:
            self.tg.start_soon(_guard, fn)

    def wake_dispatcher(self) -> None:
        self.dispatch_wake.set()

    async def emit_run_event(self, event: RunEvent) -> None:
        """Hand a run event to the SSE hub (already done via the events row), every
        observer plugin and the notification dispatcher — never blocking the request
        that caused it: observers run as background tasks with a 10 s limit."""
        for name, spec in self.registry.observers.items():
            self.spawn(lambda name=name, spec=spec: _observe(name, spec, event))
        if self.notifier is not None:
            try:
                self.notifier.publish(event)
            except Exception as exc:
                log.error("notifier.publish_failed", error=str(exc))

    async def record_delivery(self, attempt: Any) -> None:
        """Recorder for the notification dispatcher: one events row per attempt."""
        ev = attempt.as_event()
        try:
            async with self.unit() as u:
                await u.event(
                    ev.kind, ev.message, run_id=ev.run_id, host_id=ev.host_id, level=ev.level,
                    data=ev.data,
                )
        except Exception as exc:
            log.error("notification.record_failed", error=str(exc))

    # -- run cache ------------------------------------------------------------------
    async def refresh_run(self, run_id: int) -> RunAuth | None:
        row = await self.db.fetchrow(
            "SELECT id, host_id, agent_token_hash, state, version, retry_stage, override_flags_json, "
            "completed_at, current_stage FROM runs WHERE id = $1",
            run_id,
        )
        if row is None:
            self.runs.pop(run_id, None)
            return None
        auth = _auth_from_row(row)
        self.runs[run_id] = auth
        if auth.state in ENDED:
            self.engines.pop(run_id, None)
        return auth

    def changed_now(self) -> Any:
        """Value for ``runs.changed_at`` (set with every version bump)."""
        now = utcnow()
        return now.timestamp() if self.db.dialect == "sqlite" else now

    async def refresh_all_runs(self) -> None:
        """Reload runs changed since the last refresh (by any server process) into the
        cache; every 30 s reload all live ones. Cheap with 10,000 runs: the per-second
        query uses the ``changed_at`` index and usually returns nothing."""
        now = utcnow()
        full = self._last_full is None or (now - self._last_full).total_seconds() > 30
        cols = (
            "SELECT id, host_id, agent_token_hash, state, version, retry_stage, override_flags_json, "
            "completed_at, current_stage FROM runs "
        )
        if full:
            cutoff = datetime.fromtimestamp(now.timestamp() - HEARTBEAT_GRACE_S, tz=now.tzinfo)
            rows = await self.db.fetch(
                cols + f"WHERE state NOT IN {sql_states(ENDED)} OR completed_at IS NULL OR completed_at > $1",
                cutoff,
            )
            self._last_full = now
        else:
            since = (self._last_refresh or now).timestamp() - 5.0  # overlap: commit order vs clock
            rows = await self.db.fetch(
                cols + "WHERE changed_at > $1",
                since if self.db.dialect == "sqlite" else datetime.fromtimestamp(since, tz=now.tzinfo),
            )
        self._last_refresh = now
        seen = set()
        for row in rows:
            auth = _auth_from_row(row)
            seen.add(auth.run_id)
            old = self.runs.get(auth.run_id)
            if old is None or old.version != auth.version or old.token_hash != auth.token_hash:
                self.runs[auth.run_id] = auth
        for run_id in [r for r, a in self.runs.items() if a.state in ENDED and (full and r not in seen)]:
            del self.runs[run_id]
            self.engines.pop(run_id, None)
            self.stage_ids.pop(run_id, None)
            self.last_heartbeat.pop(run_id, None)
            self.hub.progress.pop(run_id, None)
            if self.ingest is not None:
                self.ingest.forget(run_id)

    # -- per-run helpers ----------------------------------------------------------
    async def engine(self, run_id: int, db: Any = None) -> ThresholdEngine:
        """The run's threshold engine (cached). Inside a transaction pass ``db=tx``: a
        transaction must never wait for a second pooled connection."""
        eng = self.engines.get(run_id)
        if eng is None:
            rows = await (db or self.db).fetch(
                "SELECT id, stage_name, kind, key, op, threshold, threshold_text, nominal, unit, severity, source "
                "FROM thresholds WHERE run_id = $1 ORDER BY ordinal",
                run_id,
            )
            rules = [rule_from_row(r) for r in rows]
            eng = ThresholdEngine(rules, self.registry.operators)
            self.engines[run_id] = eng
        return eng

    async def stage_id_map(self, run_id: int, db: Any = None) -> dict[str, int]:
        m = self.stage_ids.get(run_id)
        if m is None:
            rows = await (db or self.db).fetch("SELECT id, name FROM stages WHERE run_id = $1", run_id)
            m = {r["name"]: int(r["id"]) for r in rows}
            self.stage_ids[run_id] = m
        return m


def rule_from_row(r: dict[str, Any]) -> ThresholdRule:
    threshold: float | str = r["threshold_text"] if r["threshold_text"] is not None else float(r["threshold"])
    return ThresholdRule(
        id=int(r["id"]),
        stage=r["stage_name"],
        kind=r["kind"],
        key=r["key"],
        op=r["op"],
        threshold=threshold,
        nominal=float(r["nominal"] or 0.0),
        unit=r["unit"] or "",
        severity=Severity(r["severity"]),
        source=r["source"],
    )


def _auth_from_row(row: dict[str, Any]) -> RunAuth:
    return RunAuth(
        run_id=int(row["id"]),
        host_id=int(row["host_id"]),
        token_hash=row["agent_token_hash"],
        state=row["state"],
        version=int(row["version"]),
        retry_stage=row["retry_stage"],
        override_flags=msgspec.json.decode(row["override_flags_json"] or "{}"),
        completed_at=as_dt(row["completed_at"]),
        current_stage=row["current_stage"],
    )


async def _observe(name: str, spec: Any, event: RunEvent) -> None:
    try:
        with anyio.fail_after(10):
            await spec.handle(event)
    except Exception as exc:  # an observer never breaks a run
        log.error("observer.failed", observer=name, error=f"{type(exc).__name__}: {exc}")


async def _guard(fn: Any) -> None:
    try:
        await fn()
    except Exception as exc:
        log.exception("background.failed", error=f"{type(exc).__name__}: {exc}")


def is_terminal(state: str) -> bool:
    return RunState(state) in ENDED
