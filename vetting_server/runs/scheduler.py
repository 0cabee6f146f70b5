"""Background work of the server: dispatcher, watchdog, heartbeat flush, janitor.

- **Dispatcher**: moves ``Queued`` runs to ``WaitingBoot`` while fewer than
  ``dispatcher.concurrency`` runs are booting or running (and its host's firmware is
  not being updated), opening the run's boot window; reads the host's firmware
  inventory from its BMC for the Firmware stage when the host has a firmware provider
  (:mod:`.firmware.store`), then asks the host's boot provider plugin to ``power_on``
  (→ ``Booting``, or ``Failed`` with the provider's error; :mod:`.power`). Woken at
  once when a run is created, and every ``dispatcher.interval_s``.
- **Power** (every two seconds): holds that expired are released, and after a verdict
  the host's boot override is cleared and the host powered off (:mod:`..boot.power`).
- **Watchdog** (every second): boot timeout (no hello within ``timeouts.boot_s``),
  heartbeat timeout (→ ``AgentLost``), stage timeout (the stage's ``timeout_s`` plus
  ``timeouts.stage_grace_s``), and runs left in ``Reporting`` by a crash. Timers
  are not in memory: they are recomputed from the database every tick, so a
  restarted server re-arms them; a restart also counts as a fresh heartbeat
  (``last heartbeat = max(stored, server start)``) so agents get a full timeout to
  reach the new process.
- **Heartbeat flush**: heartbeats are kept in memory and written to
  ``runs.last_heartbeat_at`` / ``hosts.last_seen_at`` in one transaction every
  two seconds (a heartbeat costs no database round trip).
- **Janitor**: deletes artifact files and log lines past retention; run history
  rows are never deleted.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import structlog

from vetting_core.statemachine import IN_FLIGHT, RunEventType, RunState, sql_states

from .artifacts import inside
from ..db.database import as_dt, utcnow
from ..boot.power import HOST_COLUMNS, window_until
from ..runtime import Runtime

log = structlog.get_logger()

E = RunEventType
IN_FLIGHT_SQL = sql_states(IN_FLIGHT)
REPORTING_STUCK_S = 60.0  # a run in Reporting this long without a report builder gets one
# a Running run's current stage started more than its timeout before $4 (now - grace)
_STAGE_OVERDUE = {
    "sqlite": "julianday(s.started_at) + s.timeout_s / 86400.0 < julianday($4)",
    "postgresql": "s.started_at + s.timeout_s * interval '1 second' < $4",
}


class Scheduler:
    """The server's background loops (see the module): dispatcher, power, watchdog,
    heartbeat flush and janitor, each reading its timers from the database."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.db = rt.db

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._loop, "dispatcher", self.dispatch_once, self.rt.settings.dispatcher.interval_s, True)
            tg.start_soon(self._loop, "watchdog", self.watchdog_once, 1.0, False)
            tg.start_soon(self._loop, "heartbeats", self.flush_heartbeats, 2.0, False)
            tg.start_soon(self._loop, "power", self.rt.power.sweep, 2.0, False)
            tg.start_soon(self._loop, "cache", self.rt.refresh_all_runs, 1.0, False)
            tg.start_soon(
                self._loop, "janitor", self.janitor_once, self.rt.settings.retention.janitor_interval_minutes * 60, False
            )

    async def _loop(self, name: str, fn: Any, interval: float, wakeable: bool) -> None:
        while True:
            try:
                await fn()
            except Exception as exc:
                log.exception("scheduler.failed", task=name, error=f"{type(exc).__name__}: {exc}")
            if wakeable:
                with anyio.move_on_after(interval):
                    await self.rt.dispatch_wake.wait()
                self.rt.dispatch_wake = anyio.Event()
            else:
                await anyio.sleep(interval)

    # ------------------------------------------------------------------ dispatcher
    async def dispatch_once(self) -> None:
        svc = self.rt.service
        active = await self.db.fetchval(
            f"SELECT count(*) FROM runs WHERE state IN {IN_FLIGHT_SQL}"
        )
        free = self.rt.settings.dispatcher.concurrency - int(active or 0)
        if free <= 0:
            return
        queued = await self.db.fetch(
            f"SELECT r.id, {HOST_COLUMNS} FROM runs r "
            "JOIN hosts h ON h.id = r.host_id WHERE r.state = 'Queued' "
            "AND NOT EXISTS (SELECT 1 FROM runs o WHERE o.host_id = r.host_id AND o.id <> r.id "
            f"AND o.state IN {IN_FLIGHT_SQL}) "
            "AND NOT EXISTS (SELECT 1 FROM firmware_updates f WHERE f.host_id = r.host_id AND f.state = 'running') "
            "ORDER BY r.id LIMIT $1",
            free,
        )
        for row in queued:
            run_id = int(row["id"])
            run = await svc.apply(
                run_id, E.dispatch, expect={"Queued"}, message="dispatched: powering the host on",
                boot_window_until=window_until(self.rt.settings, utcnow()), ipxe_served_at=None, ipxe_served_to=None,
            )
            if run is None:
                continue  # another replica took it, or the agent said hello first
            self.rt.spawn(lambda run_id=run_id, row=dict(row): self._power_on(run_id, row))

    async def _power_on(self, run_id: int, row: dict[str, Any]) -> None:
        if self.rt.firmware is not None:
            await self.rt.firmware.bmc_firmware_for_run(run_id, int(row["host_id"]))
        await self.rt.power.power_on(run_id, row)

    # ------------------------------------------------------------------ watchdog
    async def watchdog_once(self) -> None:
        rt, svc = self.rt, self.rt.service
        t = rt.settings.timeouts
        now = utcnow()
        # only the runs that may be overdue by the database's clocks (the checks below,
        # with the heartbeats not flushed yet, decide): a fleet of 10,000 healthy runs
        # costs an index scan a second, not 10,000 rows through Python
        rows = await self.db.fetch(
            "SELECT r.id, r.state, r.state_changed_at, r.hello_at, r.last_heartbeat_at, r.current_stage, "
            "s.started_at AS stage_started_at, s.timeout_s FROM runs r "
            "LEFT JOIN stages s ON s.run_id = r.id AND s.name = r.current_stage "
            f"WHERE r.state IN {IN_FLIGHT_SQL} AND ("
            "(r.state = 'Reporting' AND r.state_changed_at < $1) "
            "OR (r.state IN ('WaitingBoot', 'Booting') AND r.hello_at IS NULL AND r.state_changed_at < $2) "
            "OR (r.state IN ('Booting', 'Running') AND r.last_heartbeat_at < $3) "
            f"OR (r.state = 'Running' AND {_STAGE_OVERDUE[self.db.dialect]}))",
            now - timedelta(seconds=REPORTING_STUCK_S), now - timedelta(seconds=t.boot_s),
            now - timedelta(seconds=t.heartbeat_timeout_s), now - timedelta(seconds=t.stage_grace_s),
        )
        for r in rows:
            run_id = int(r["id"])
            state = r["state"]
            changed = max(as_dt(r["state_changed_at"]), rt.started_at)
            if state == RunState.Reporting.value:
                if (now - changed).total_seconds() > REPORTING_STUCK_S and run_id not in rt.reporting.active:
                    rt.spawn(lambda run_id=run_id: rt.reporting.build(run_id))
                continue
            hb = [d for d in (as_dt(r["last_heartbeat_at"]), rt.last_heartbeat.get(run_id), rt.heartbeats.get(run_id)) if d]
            last_hb = max(hb) if hb else None
            if last_hb is not None:
                last_hb = max(last_hb, rt.started_at)
            if state in (RunState.WaitingBoot.value, RunState.Booting.value) and r["hello_at"] is None:
                if (now - changed).total_seconds() > t.boot_s:
                    await svc.apply(run_id, E.timeout, expect={state},
                                    reason=f"boot timeout: no agent said hello within {t.boot_s:.0f}s")
                continue
            if state in (RunState.Booting.value, RunState.Running.value) and last_hb is not None:
                silent = (now - last_hb).total_seconds()
                if silent > t.heartbeat_timeout_s:
                    await svc.apply(run_id, E.agent_lost, expect={state}, stage=r["current_stage"],
                                    failed_stage=r["current_stage"],
                                    reason=f"agent lost: no heartbeat for {silent:.0f}s (timeout {t.heartbeat_timeout_s:.0f}s)")
                    continue
            if state == RunState.Running.value and r["stage_started_at"] is not None and r["timeout_s"] is not None:
                started = max(as_dt(r["stage_started_at"]), rt.started_at)
                limit = float(r["timeout_s"]) + t.stage_grace_s
                if (now - started).total_seconds() > limit:
                    await svc.apply(run_id, E.timeout, expect={state}, stage=r["current_stage"],
                                    failed_stage=r["current_stage"],
                                    reason=f"stage {r['current_stage']} exceeded its timeout ({limit:.0f}s incl. grace)")

    # ------------------------------------------------------------------ heartbeats
    async def flush_heartbeats(self) -> None:
        rt = self.rt
        runs, rt.heartbeats = rt.heartbeats, {}
        hosts, rt.host_seen = rt.host_seen, {}
        if not runs and not hosts:
            return
        async with rt.db.transaction() as tx:
            if runs:
                await tx.executemany(
                    "UPDATE runs SET last_heartbeat_at = $2 WHERE id = $1", [(k, v) for k, v in runs.items()]
                )
            if hosts:
                await tx.executemany(
                    "UPDATE hosts SET last_seen_at = $2, last_seen_ip = $3, agent_version = $4 WHERE id = $1",
                    [(k, v[0], v[1], v[2]) for k, v in hosts.items()],
                )

    # ------------------------------------------------------------------ janitor
    async def janitor_once(self) -> dict[str, int]:
        """Delete artifact files (and their rows) and log lines past retention.

        Reports are kept with the run history: they are the run's summary, small, and
        what an operator opens a year later to compare a host with itself."""
        rt = self.rt
        r = rt.settings.retention
        now = utcnow()
        removed = {"artifacts": 0, "log_lines": 0}
        cutoff = now - timedelta(days=r.artifacts_days)
        arts = await self.db.fetch(
            "SELECT a.id, a.path FROM artifacts a JOIN runs r ON r.id = a.run_id WHERE a.location = 'server' "
            "AND a.kind NOT LIKE 'report%' AND r.completed_at IS NOT NULL AND r.completed_at < $1",
            cutoff,
        )
        for a in arts:
            p = Path(a["path"])
            if inside(p, rt.data_dir):
                p.unlink(missing_ok=True)
            await self.db.execute("DELETE FROM artifacts WHERE id = $1", int(a["id"]))
            removed["artifacts"] += 1
        log_cutoff = now - timedelta(days=r.logs_days)
        old = await self.db.fetch(
            "SELECT id FROM runs WHERE completed_at IS NOT NULL AND completed_at < $1", log_cutoff
        )
        for row in old:
            removed["log_lines"] += await self.db.execute("DELETE FROM log_lines WHERE run_id = $1", int(row["id"]))
        if any(removed.values()):
            log.info("janitor.swept", **removed)
        return removed



def monotonic() -> float:
    return time.monotonic()


__all__ = ["Scheduler", "datetime"]
