"""Prometheus metrics at ``GET /metrics`` (the official ``prometheus-client``).

Kept off the agents' hot path: ingest and notification counters are the figures the
ingest writer and the notification dispatcher already keep (read when Prometheus
scrapes, never incremented per request here); run counts by state and connected agents
are read at scrape time too. What is observed as it happens is cheap and rare: one
histogram observation per group commit (not per batch), per finished stage, and per
heartbeat that reports its previous round trip. ``bench/ingest.py`` measured the
server with and without it (docs/api.md, "Metrics").

Every app has its own registry (no module-global state): two servers in one test
process keep their own figures.

=========================================  =========  =======================================
metric                                     type       what
=========================================  =========  =======================================
``vetting_runs{state}``                    gauge      runs in each state
``vetting_agents_connected{mode}``         gauge      run agents (``run``) that heartbeated within
                                                      the heartbeat timeout; host-mode agents
                                                      (``host``) seen within it
``vetting_stage_duration_seconds``         histogram  stage durations by ``stage`` and ``verdict``
``vetting_ingest_samples_total``           counter    sensor samples stored
``vetting_ingest_log_lines_total``         counter    log lines stored
``vetting_ingest_batches_total{stream}``   counter    batches committed (``sensor``, ``log``)
``vetting_ingest_duplicate_batches_total`` counter    retried batches acknowledged, stored once
``vetting_ingest_groups_total``            counter    group commits
``vetting_ingest_writer_queue_depth``      gauge      batches waiting for the writer
``vetting_ingest_group_commit_seconds``    histogram  time to write and commit one group
``vetting_heartbeat_latency_seconds``      histogram  heartbeat round trip as the agents measure
                                                      it (each heartbeat reports the previous)
``vetting_notifications_total``            counter    notification attempts by ``target`` and
                                                      ``outcome`` (delivered, failed, dropped)
=========================================  =========  =======================================
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from vetting_core.statemachine import RunState

from .db.database import utcnow

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
RUN_STATES = tuple(s.value for s in RunState)
STAGE_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 43200)
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The app's registry: the observed histograms, and a collector that reads the rest
    at scrape time (:meth:`refresh` first fetches what needs the database)."""

    def __init__(self, rt: Any) -> None:
        self.rt = rt
        self.registry = CollectorRegistry(auto_describe=True)
        self.stage_duration = Histogram(
            "vetting_stage_duration_seconds", "Duration of finished stages", ["stage", "verdict"],
            buckets=STAGE_BUCKETS, registry=self.registry,
        )
        self.group_commit = Histogram(
            "vetting_ingest_group_commit_seconds", "Time to write and commit one group of batches",
            buckets=COMMIT_BUCKETS, registry=self.registry,
        )
        self.heartbeat_latency = Histogram(
            "vetting_heartbeat_latency_seconds", "Heartbeat round trip as the agents measure it",
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self._runs: dict[str, int] = {}
        self.registry.register(_Snapshot(self))

    async def refresh(self) -> None:
        rows = await self.rt.db.fetch("SELECT state, count(*) AS n FROM runs GROUP BY state")
        self._runs = {r["state"]: int(r["n"]) for r in rows}

    async def render(self) -> bytes:
        await self.refresh()
        return generate_latest(self.registry)


class _Snapshot(Collector):
    """Figures the server keeps anyway, turned into metric families when scraped."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Any:
        rt = self.m.rt
        runs = GaugeMetricFamily("vetting_runs", "Runs in each state", labels=["state"])
        for state in RUN_STATES:
            runs.add_metric([state], self.m._runs.get(state, 0))
        yield runs

        since = utcnow() - timedelta(seconds=rt.settings.timeouts.heartbeat_timeout_s)
        agents = GaugeMetricFamily("vetting_agents_connected", "Agents heard from within the heartbeat timeout",
                                   labels=["mode"])
        agents.add_metric(["run"], sum(1 for ts in list(rt.last_heartbeat.values()) if ts >= since))
        agents.add_metric(["host"], sum(1 for seen in list(rt.host_seen.values()) if seen[0] >= since))
        yield agents

        ingest = rt.ingest
        stats = ingest.stats if ingest is not None else {}
        for name, key, text in (
            ("vetting_ingest_samples", "samples", "Sensor samples stored"),
            ("vetting_ingest_log_lines", "log_lines", "Log lines stored"),
            ("vetting_ingest_duplicate_batches", "duplicates", "Retried batches acknowledged and stored once"),
            ("vetting_ingest_groups", "groups", "Group commits"),
        ):
            yield CounterMetricFamily(name, text, value=stats.get(key, 0))
        batches = CounterMetricFamily("vetting_ingest_batches", "Batches committed", labels=["stream"])
        for stream in ("sensor", "log"):
            batches.add_metric([stream], stats.get(f"{stream}_batches", 0))
        yield batches
        yield GaugeMetricFamily("vetting_ingest_writer_queue_depth", "Batches waiting for the writer",
                                value=ingest.queue_depth if ingest is not None else 0)

        notes = CounterMetricFamily("vetting_notifications", "Notification attempts by target and outcome",
                                    labels=["target", "outcome"])
        notifier = rt.notifier
        by_target = notifier.stats.by_target if notifier is not None else {}
        for target, counts in sorted(by_target.items()):
            for outcome in ("delivered", "failed", "dropped"):
                notes.add_metric([target, outcome], counts.get(outcome, 0))
        yield notes
