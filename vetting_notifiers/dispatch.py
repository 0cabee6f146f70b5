"""Route run events to notification targets without ever blocking the publisher.

The seed fired one goroutine per target with one attempt and a 10 s timeout, and lost
the rest. Here every target has its own bounded queue and its own workers, so a
receiver that hangs fills only its own queue; each delivery gets the target's timeout
(default 10 s) and bounded retries with exponential backoff and jitter; and every
attempt — delivered, retrying, failed or dropped — is handed to ``recorder`` so the
server can store it in the events table and show it in the run's history.

Usage::

    dispatcher = NotificationDispatcher(registry, settings.notifications, recorder)
    async with dispatcher:                 # owns a task group
        dispatcher.publish(event)          # synchronous, returns at once

``publish`` never awaits: when a target's queue is full the event is recorded as a
``dropped`` attempt for that target instead of waiting.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import anyio
import msgspec
import structlog
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from vetting_core.config import NotificationSettings, NotifyRoute, NotifyTarget
from vetting_core.events import RunEvent, RunEventKind
from vetting_core.model import Event
from vetting_core.records import Notifier

from .config import NotifierConfigError, convert_config

log = structlog.get_logger()

Outcome = Literal["delivered", "retrying", "failed", "dropped"]
MAX_ERROR_CHARS = 500


class DeliveryAttempt(msgspec.Struct, kw_only=True, frozen=True):
    """One try at delivering one event to one target.

    ``attempt`` counts from 1 (0 for an event dropped before any try). ``outcome`` says
    what happens next: ``delivered``; ``retrying`` (this try failed, another follows);
    ``failed`` (the last try failed: the notification is lost); ``dropped`` (the
    target's queue was full or the dispatcher stopped before it was tried).
    """

    target: str
    kind: str  # notifier kind: ntfy, discord, smtp, webhook...
    event_kind: str
    run_id: int | None
    attempt: int
    ok: bool
    outcome: Outcome
    ts: datetime
    duration_s: float = 0.0
    error: str | None = None
    max_attempts: int = 1
    host_id: int | None = None

    def as_event(self) -> Event:
        """The attempt as an event-log row (``kind="notification"``)."""
        if self.outcome == "delivered":
            level, verb = "info", "delivered"
        elif self.outcome == "retrying":
            level, verb = "warning", f"attempt {self.attempt}/{self.max_attempts} failed, retrying"
        elif self.outcome == "dropped":
            level, verb = "error", "dropped"
        else:
            level, verb = "error", f"failed after {self.attempt} attempt(s)"
        msg = f"{self.event_kind} notification to {self.target} ({self.kind}) {verb}"
        if self.error:
            msg += f": {self.error}"
        return Event(
            ts=self.ts,
            kind="notification",
            level=level,
            message=msg,
            run_id=self.run_id,
            host_id=self.host_id,
            data=msgspec.to_builtins(self),
        )


Recorder = Callable[[DeliveryAttempt], Awaitable[None]]


@dataclass
class _Target:
    name: str
    kind: str
    notifier: Notifier
    timeout_s: float
    attempts: int
    send: MemoryObjectSendStream[RunEvent] | None = None
    receive: MemoryObjectReceiveStream[RunEvent] | None = None


@dataclass
class DispatchStats:
    published: int = 0
    queued: int = 0
    delivered: int = 0
    failed: int = 0
    dropped: int = 0
    unrecorded: int = 0  # attempts the recorder never saw (its own queue was full)
    by_target: dict[str, dict[str, int]] = field(default_factory=dict)


def _kind(value: Any) -> str:
    return getattr(value, "value", str(value))


def build_targets(registry: Any, settings: NotificationSettings) -> dict[str, _Target]:
    """Instantiate every configured target; raise :class:`NotifierConfigError` listing
    every problem (unknown kind, bad config field, unknown event kind in a route)."""
    problems: list[str] = []
    targets: dict[str, _Target] = {}
    notifiers = getattr(registry, "notifiers", registry)
    for i, t in enumerate(settings.targets):
        where = f"$.notifications.targets[{i}]"
        spec = notifiers.get(t.kind)
        if spec is None:
            problems.append(
                f"{where} ({t.name}): unknown notifier kind {t.kind!r} "
                f"(installed: {', '.join(sorted(notifiers)) or 'none'})"
            )
            continue
        if t.timeout_s <= 0 or not math.isfinite(t.timeout_s):
            problems.append(f"{where}.timeout_s ({t.name}): must be a positive number of seconds")
            continue
        if not 0 <= t.retries <= 100:
            problems.append(f"{where}.retries ({t.name}): must be between 0 and 100")
            continue
        try:
            config = (
                convert_config(t.config, spec.config_type, where=f"{where}.config")
                if spec.config_type is not None
                else t.config
            )
            notifier = spec.factory(config)
        except (NotifierConfigError, ValueError, TypeError) as exc:
            problems.append(f"{where} ({t.name}): {exc}")
            continue
        targets[t.name] = _Target(t.name, t.kind, notifier, t.timeout_s, t.retries + 1)
    known = {k.value for k in RunEventKind}
    for i, route in enumerate(settings.routes):
        for name in route.events:
            if name != "*" and name not in known:
                problems.append(
                    f"$.notifications.routes[{i}].events: unknown event kind {name!r} "
                    f'(known: {", ".join(sorted(known))}, or "*")'
                )
        for name in route.targets:
            if name not in {t.name for t in settings.targets}:
                problems.append(f"$.notifications.routes[{i}].targets: unknown target {name!r}")
    if problems:
        raise NotifierConfigError("invalid notification settings:\n  " + "\n  ".join(problems))
    return targets


def route_matches(route: NotifyRoute, event: RunEvent) -> bool:
    kind, sev = _kind(event.kind), _kind(event.severity)
    return ("*" in route.events or kind in route.events) and sev in route.severities


class NotificationDispatcher:
    """See the module docstring. Not thread-safe: call ``publish`` from the event loop
    that entered the dispatcher."""

    def __init__(
        self,
        registry: Any,
        settings: NotificationSettings,
        recorder: Recorder,
        *,
        queue_size: int = 256,
        workers_per_target: int = 2,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
        drain_timeout_s: float = 5.0,
    ) -> None:
        self.settings = settings
        self.recorder = recorder
        self.queue_size = queue_size
        self.workers_per_target = max(1, workers_per_target)
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.drain_timeout_s = drain_timeout_s
        self.targets = build_targets(registry, settings)
        self.stats = DispatchStats(
            by_target={n: {"delivered": 0, "failed": 0, "dropped": 0} for n in self.targets}
        )
        self._tg: TaskGroup | None = None
        self._running = False
        self._records_send: MemoryObjectSendStream[DeliveryAttempt] | None = None
        self._active_workers = 0
        self._workers_done: anyio.Event | None = None
        self._records_leftover: MemoryObjectReceiveStream[DeliveryAttempt] | None = None

    # --- routing -------------------------------------------------------------------

    def targets_for(self, event: RunEvent) -> list[str]:
        """Names of the targets that ``event`` goes to (each at most once)."""
        names: list[str] = []
        for route in self.settings.routes:
            if route_matches(route, event):
                for name in route.targets:
                    if name in self.targets and name not in names:
                        names.append(name)
        return names

    def publish(self, event: RunEvent) -> list[str]:
        """Queue ``event`` for every matching target and return at once.

        Returns the names of the targets it was queued for. A target whose queue is
        full gets a ``dropped`` attempt recorded instead.
        """
        if not self._running:
            raise RuntimeError("NotificationDispatcher.publish() called outside 'async with dispatcher'")
        self.stats.published += 1
        queued: list[str] = []
        for name in self.targets_for(event):
            target = self.targets[name]
            assert target.send is not None
            try:
                target.send.send_nowait(event)
            except anyio.WouldBlock:
                self._drop(target, event, f"queue full ({self.queue_size} events waiting)")
                continue
            queued.append(name)
            self.stats.queued += 1
        return queued

    # --- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> NotificationDispatcher:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._workers_done = anyio.Event()
        rec_send, rec_receive = anyio.create_memory_object_stream[DeliveryAttempt](
            max(64, self.queue_size * 4)
        )
        self._records_send = rec_send
        # a second handle stays open so that attempts emitted while the task group is
        # being cancelled can still be handed to the recorder after it has stopped
        self._records_leftover = rec_receive.clone()
        self._tg.start_soon(self._record_worker, rec_receive)
        for target in self.targets.values():
            target.send, target.receive = anyio.create_memory_object_stream[RunEvent](self.queue_size)
            for _ in range(self.workers_per_target):
                self._active_workers += 1
                self._tg.start_soon(self._worker, target, target.receive.clone())
            # target.receive stays open: after a cancelled shutdown it yields the events
            # no worker got to, which are then recorded as dropped
        if not self._active_workers:
            self._workers_done.set()
        self._running = True
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        """Stop accepting events, give queued deliveries ``drain_timeout_s`` to finish,
        then cancel what is left (recorded as dropped/failed). Also safe when the
        surrounding scope is cancelled while draining."""
        self._running = False
        for target in self.targets.values():
            if target.send is not None:
                target.send.close()
        assert self._tg is not None and self._workers_done is not None
        drained = False
        try:
            with anyio.move_on_after(self.drain_timeout_s):
                await self._workers_done.wait()
            drained = self._workers_done.is_set()
        finally:
            if drained and self._records_send is not None:
                self._records_send.close()  # lets the record worker drain and end
            else:
                self._tg.cancel_scope.cancel()
            try:
                suppress = await self._tg.__aexit__(*exc_info)
            finally:
                self._tg = None
                with anyio.CancelScope(shield=True):
                    self._drop_unsent()
                    await self._record_leftovers()
        return suppress

    def _drop_unsent(self) -> None:
        for target in self.targets.values():
            if target.receive is None:
                continue
            while True:
                try:
                    event = target.receive.receive_nowait()
                except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                    break
                self._drop(target, event, "dispatcher stopped before it was tried")
            target.receive.close()
            target.receive = None

    async def _record_leftovers(self) -> None:
        leftover = getattr(self, "_records_leftover", None)
        if leftover is None:
            return
        with anyio.move_on_after(5):
            while True:
                try:
                    attempt = leftover.receive_nowait()
                except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                    break
                try:
                    await self.recorder(attempt)
                except Exception as exc:
                    self.stats.unrecorded += 1
                    log.error("notify.recorder_failed", error=f"{type(exc).__name__}: {exc}")
        leftover.close()
        self._records_leftover = None
        if self._records_send is not None:
            self._records_send.close()

    # --- internals -----------------------------------------------------------------

    def _emit(self, attempt: DeliveryAttempt) -> None:
        stats = self.stats.by_target.setdefault(attempt.target, {"delivered": 0, "failed": 0, "dropped": 0})
        if attempt.outcome in stats:
            stats[attempt.outcome] += 1
        if attempt.outcome == "delivered":
            self.stats.delivered += 1
        elif attempt.outcome == "failed":
            self.stats.failed += 1
        elif attempt.outcome == "dropped":
            self.stats.dropped += 1
        try:
            assert self._records_send is not None
            self._records_send.send_nowait(attempt)
        except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError, AssertionError):
            self.stats.unrecorded += 1
            log.error(
                "notify.attempt_unrecorded",
                target=attempt.target,
                outcome=attempt.outcome,
                run_id=attempt.run_id,
                error=attempt.error,
            )

    def _drop(self, target: _Target, event: RunEvent, why: str) -> None:
        log.warning(
            "notify.dropped", target=target.name, event_kind=_kind(event.kind), run_id=event.run_id, why=why
        )
        self._emit(
            DeliveryAttempt(
                target=target.name,
                kind=target.kind,
                event_kind=_kind(event.kind),
                run_id=event.run_id,
                host_id=event.host_id,
                attempt=0,
                ok=False,
                outcome="dropped",
                ts=datetime.now(UTC),
                error=why,
                max_attempts=target.attempts,
            )
        )

    async def _record_worker(self, receive: MemoryObjectReceiveStream[DeliveryAttempt]) -> None:
        async with receive:
            async for attempt in receive:
                try:
                    await self.recorder(attempt)
                except Exception as exc:  # a broken recorder must not stop deliveries
                    self.stats.unrecorded += 1
                    log.error("notify.recorder_failed", error=f"{type(exc).__name__}: {exc}")

    async def _worker(self, target: _Target, receive: MemoryObjectReceiveStream[RunEvent]) -> None:
        try:
            async with receive:
                async for event in receive:
                    await self._deliver(target, event)
        finally:
            self._active_workers -= 1
            if self._active_workers == 0 and self._workers_done is not None:
                self._workers_done.set()

    def backoff(self, attempt: int, hint_s: float | None = None) -> float:
        """Delay before try ``attempt + 1``: exponential, capped, with jitter (50–100 %)."""
        delay = min(self.backoff_max_s, self.backoff_base_s * (2 ** (attempt - 1)))
        delay *= random.uniform(0.5, 1.0)
        if hint_s is not None and hint_s > 0:  # e.g. HTTP 429 Retry-After
            delay = max(delay, min(hint_s, self.backoff_max_s))
        return delay

    async def _deliver(self, target: _Target, event: RunEvent) -> None:
        kind = _kind(event.kind)
        for n in range(1, target.attempts + 1):
            started = time.monotonic()
            error: str | None = None
            hint: float | None = None
            try:
                with anyio.fail_after(target.timeout_s):
                    await target.notifier.send(event)
            except TimeoutError:
                error = f"timed out after {target.timeout_s:g} s"
            except anyio.get_cancelled_exc_class():
                with anyio.CancelScope(shield=True):
                    self._emit(
                        self._attempt(
                            target, event, n, False, "failed", started, "cancelled: dispatcher stopped"
                        )
                    )
                raise
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                if len(error) > MAX_ERROR_CHARS:  # a plugin may raise with a whole page of HTML
                    error = error[: MAX_ERROR_CHARS - 1] + "…"
                hint = getattr(exc, "retry_after_s", None)
            if error is None:
                self._emit(self._attempt(target, event, n, True, "delivered", started, None))
                return
            last = n == target.attempts
            outcome: Outcome = "failed" if last else "retrying"
            self._emit(self._attempt(target, event, n, False, outcome, started, error))
            log.warning("notify.attempt_failed", target=target.name, event_kind=kind, attempt=n, error=error)
            if not last:
                await anyio.sleep(self.backoff(n, hint))

    def _attempt(
        self,
        target: _Target,
        event: RunEvent,
        n: int,
        ok: bool,
        outcome: Outcome,
        started: float,
        error: str | None,
    ) -> DeliveryAttempt:
        return DeliveryAttempt(
            target=target.name,
            kind=target.kind,
            event_kind=_kind(event.kind),
            run_id=event.run_id,
            host_id=event.host_id,
            attempt=n,
            ok=ok,
            outcome=outcome,
            ts=datetime.now(UTC),
            duration_s=round(time.monotonic() - started, 6),
            error=error,
            max_attempts=target.attempts,
        )


__all__ = [
    "DeliveryAttempt",
    "DispatchStats",
    "NotificationDispatcher",
    "NotifierConfigError",
    "NotifyRoute",
    "NotifyTarget",
    "Recorder",
    "build_targets",
    "route_matches",
]
