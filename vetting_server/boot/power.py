"""Driving a host's power through its boot provider: the power-on that starts a run,
and the clean-up after the verdict.

**Power-on** (the dispatcher, ``Queued → WaitingBoot``): the run's *boot window*
opens (``runs.boot_window_until = now + boot.window_s``; ``GET /ipxe/{mac}`` hands the
run token out once inside it, see :mod:`.netboot`), then the provider's ``power_on``
runs, bounded by ``boot.provider_timeout_s``. Its message goes to the run's history
(``→ Booting``); its error becomes the run's reason (``→ Failed``).

**After the verdict** the host should not keep booting from the network, nor keep
running: the transition that decides the run also sets ``runs.power_due_at``
(:func:`power_due`), and :meth:`PowerControl.sweep` (every two seconds, from the
scheduler) clears the boot override and — with ``boot.power_off_after`` — powers the
host off once that time has passed. The timer is a column, not a task, so a restarted
server (or another replica) still does it, and ``UPDATE … WHERE power_due_at = :seen``
lets exactly one process act. When:

- ``Completed``: ``boot.power_off_delay_s`` later (the agent powers itself off on
  ``shutdown``; the BMC makes sure);
- ``Failed``: at once plus that delay when holds are off or the agent never said
  hello; otherwise after ``hold.key_ttl_hours`` (a hold may open);
- ``FailedHolding``: when the hold expires — the run is then released (``Released``),
  which makes the clean-up due at once;
- ``Released``/``Cancelled``: at once; an override (``FailedHolding → Running``)
  cancels it.

Only runs the server powered on (``boot_window_until`` set) are touched: cancelling a
run that never left the queue must not power off a host that is in production.
Providers without ``power_off``/``clear_boot_override`` (WoL, manual, host mode) are
skipped.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import anyio
import msgspec
import structlog

from vetting_core.boot import BootError
from vetting_core.config import Settings
from vetting_core.statemachine import RunEventType, RunState

from ..db.database import utcnow
from ..runtime import Runtime

log = structlog.get_logger()

E = RunEventType
KEEP = object()  # power_due(): leave runs.power_due_at as it is


class BootHost(msgspec.Struct, kw_only=True):
    """What a boot provider's methods receive as ``host``."""

    id: int
    name: str
    mac: str
    boot_provider: str
    boot_config: dict[str, Any] = {}


def power_due(settings: Settings, run: dict[str, Any], next_state: RunState, fields: dict[str, Any], now: datetime) -> Any:
    """``runs.power_due_at`` after ``run`` moves to ``next_state`` (or :data:`KEEP`)."""
    if run.get("boot_window_until") is None:
        return KEEP  # the server never powered this host on for this run
    delay = timedelta(seconds=settings.boot.power_off_delay_s)
    if next_state is RunState.Completed:
        return now + delay
    if next_state in (RunState.Released, RunState.Cancelled):
        return now
    if next_state is RunState.Failed:
        if not settings.hold.enabled or run.get("hello_at") is None:
            return now + delay
        return now + timedelta(hours=settings.hold.key_ttl_hours)
    if next_state is RunState.FailedHolding:
        return fields.get("hold_expires_at", KEEP)
    if next_state is RunState.Running and run.get("state") == RunState.FailedHolding.value:
        return None  # override: the run goes on
    return KEEP


def boot_host(row: dict[str, Any]) -> BootHost:
    return BootHost(
        id=int(row["host_id"]), name=row["name"], mac=row["mac"], boot_provider=row["boot_provider"],
        boot_config=msgspec.json.decode(row["boot_config_json"] or "{}"),
    )


HOST_COLUMNS = "h.id AS host_id, h.name, h.mac, h.boot_provider, h.boot_config_json"


class PowerControl:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def provider(self, host: BootHost) -> Any:
        spec = self.rt.registry.boot_providers.get(host.boot_provider)
        if spec is None:
            raise BootError(f"boot provider {host.boot_provider!r} is not installed")
        try:
            config = msgspec.convert(host.boot_config, spec.config_type) if spec.config_type else host.boot_config
        except msgspec.ValidationError as exc:
            raise BootError(f"boot provider {host.boot_provider}: boot_config: {exc}") from None
        return spec.factory(config)

    async def _call(self, host: BootHost, what: str, fn: Any) -> str:
        limit = self.rt.settings.boot.provider_timeout_s
        try:
            with anyio.fail_after(limit):
                return str(await fn())
        except TimeoutError:
            raise BootError(f"boot provider {host.boot_provider} did not finish {what} within {limit:.0f}s") from None

    async def power_on(self, run_id: int, row: dict[str, Any]) -> None:
        """The dispatcher's second half: the run is ``WaitingBoot`` with its window open."""
        svc = self.rt.service
        host = boot_host(row)
        try:
            provider = self.provider(host)
            message = await self._call(host, "power on", lambda: provider.power_on(host, boot_target="pxe"))
        except Exception as exc:
            detail = str(exc) if isinstance(exc, BootError) else f"{type(exc).__name__}: {exc}"
            await svc.apply(run_id, E.boot_failed, expect={"WaitingBoot"},
                            reason=f"boot provider {host.boot_provider}: {detail}")
            return
        await svc.apply(run_id, E.boot_requested, expect={"WaitingBoot"}, boot_message=message[:2000],
                        message=f"boot requested: {message}")

    async def sweep(self) -> None:
        """Release expired holds; clean up after the runs whose time has come."""
        rt = self.rt
        now = utcnow()
        rows = await rt.db.fetch(
            f"SELECT r.id, r.state, r.power_due_at, {HOST_COLUMNS} FROM runs r JOIN hosts h ON h.id = r.host_id "
            "WHERE r.power_due_at IS NOT NULL AND r.power_due_at < $1 ORDER BY r.power_due_at LIMIT 100",
            now,
        )
        for row in rows:
            run_id = int(row["id"])
            if row["state"] == RunState.FailedHolding.value:
                await rt.service.apply(run_id, E.release, expect={"FailedHolding"}, actor="vetting",
                                       message="hold expired: released")
                continue  # the release made the clean-up due now: the next sweep does it
            taken = await rt.db.execute(
                "UPDATE runs SET power_due_at = NULL WHERE id = $1 AND power_due_at = $2", run_id, row["power_due_at"]
            )
            if taken == 1:  # this process does it, no other replica
                rt.spawn(lambda run_id=run_id, row=dict(row): self.clean_up(run_id, row))

    async def clean_up(self, run_id: int, row: dict[str, Any]) -> None:
        host = boot_host(row)
        done: list[str] = []
        level = "info"
        try:
            provider = self.provider(host)
            if hasattr(provider, "clear_boot_override"):
                done.append(await self._call(host, "clearing the boot override", lambda: provider.clear_boot_override(host)))
            if self.rt.settings.boot.power_off_after and hasattr(provider, "power_off"):
                done.append(await self._call(host, "power off", lambda: provider.power_off(host)))
        except Exception as exc:
            level = "error"
            done.append(str(exc) if isinstance(exc, BootError) else f"{type(exc).__name__}: {exc}")
        if not done:
            return  # a provider without power control: nothing was due
        text = f"after the verdict ({row['state']}): " + "; ".join(done)
        log.info("power.cleaned_up", run_id=run_id, host=host.name, message=text)
        async with self.rt.unit() as u:
            await u.event("boot", text, run_id=run_id, host_id=host.id, level=level)


def window_until(settings: Settings, now: datetime) -> datetime:
    return now + timedelta(seconds=settings.boot.window_s)


__all__ = ["KEEP", "BootHost", "PowerControl", "power_due", "window_until"]
