"""The campaign loop: step every running plan under its policy, update hosts, vet them.

A step (every ``firmware.interval_s``, and at once when an operator acts):

1. **stop**: with ``stop_on_failure``, the first failed host (its update, or the
   vetting run after it) cancels the hosts not started yet — a host whose flash is
   running is never interrupted;
2. **finish**: when no host is pending, updating or being vetted, the plan ends
   ``completed`` (every host updated and, when asked, vetted) or ``failed``;
3. **window**: outside the maintenance window no host starts (``waiting`` says
   until when); updates already running go on — a flash is never cut off;
4. **start**: up to ``max_concurrent`` hosts out of service at once — updating,
   waiting to retry, or in the vetting run that follows — in priority order,
   skipping a host that has a vetting run in progress (or its power clean-up still
   due: the server would power it off mid-flash) or is updated by another plan.

One host's update (:meth:`CampaignRunner.update_host`), each artifact in order:
check the stored image's SHA-256 (a mismatch fails the host before the BMC is even
contacted); read the inventory (already at the version: nothing to do); install
(download + install phases, the provider follows the BMC's task); reboot when the
BMC says the image needs a reset (or the artifact says ``always``); verify: re-read
the inventory until the new version shows or ``verify_timeout_s`` passes. Then,
with ``vet_after_update``, a new vetting run. A failure is retried ``retries``
times (``retrying`` for ``retry_delay_s``), except a checksum mismatch.

An update in ``running`` touches its row at least every 30 s; one left untouched
for two minutes by any server process (a crash, a restart) is failed as
interrupted, naming the phase it was in: the BMC may have finished on its own.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import anyio
import msgspec
import structlog

from vetting_core.boot import BootError
from vetting_core.firmware import FirmwareItem, FirmwareUpdateError, image_items
from vetting_core.statemachine import BUSY, sql_states

from ..db.database import as_dt, utcnow
from ..errors import ApiError
from ..runs.service import jdump
from ..runtime import Runtime
from ..security import new_token, token_hash
from .plans import Policy, describe_window, window_state
from .states import UPDATE_ACTIVE, InvalidMove, PlanState, UpdateState
from .store import ChecksumMismatch, Conflict, FirmwareStore

log = structlog.get_logger()

STALE_S = 120.0
TOUCH_S = 30.0


class CampaignRunner:
    """The campaign loop of one server process: steps every running firmware plan under
    its policy (stop, finish, window, start), drives each host's update through its
    firmware provider, and starts the vetting run after it."""

    def __init__(self, rt: Runtime, store: FirmwareStore) -> None:
        self.rt = rt
        self.db = rt.db
        self.store = store
        self.wake = anyio.Event()
        self.mine: set[int] = set()  # host updates running in this process
        self.clock = utcnow  # the maintenance window's "now" (tests move it)

    async def run(self) -> None:
        interval = self.rt.settings.firmware.interval_s
        while True:
            try:
                await self.step_all()
            except Exception as exc:
                log.exception("firmware.step_failed", error=f"{type(exc).__name__}: {exc}")
            with anyio.move_on_after(interval):
                await self.wake.wait()
            self.wake = anyio.Event()

    def poke(self) -> None:
        self.wake.set()

    async def step_all(self) -> None:
        await self._fail_interrupted()
        for row in await self.db.fetch("SELECT id FROM firmware_plans WHERE state = 'running' ORDER BY id"):
            try:
                await self.step(int(row["id"]))
            except Conflict:
                continue  # another request or replica moved it: next tick

    # ------------------------------------------------------------------ one plan
    async def step(self, plan_id: int) -> None:
        plan = await self.store.plan(plan_id)
        if plan["state"] != PlanState.running.value:
            return
        policy = msgspec.json.decode(plan["policy_json"], type=Policy)
        updates = await self.store.updates(plan_id)
        failed = [u for u in updates if host_failed(u, policy)]
        vetting = [u for u in updates if u["state"] == "completed" and u["vet_run_id"] is not None and u["vet_result"] is None]
        active = [u for u in updates if u["state"] in {s.value for s in UPDATE_ACTIVE}] + vetting
        waiting = [u for u in updates if u["state"] == "pending"]
        if failed and policy.stop_on_failure and waiting:
            first = failed[0]
            why = first["reason"] or first["vet_reason"] or "failed"
            async with self.rt.unit() as u:
                for w in waiting:
                    await self.store.move_update(
                        u, w, "cancel", reason=f"not started: {first['host_name']} failed and the plan stops on the first failure",
                        text=f"not started: {first['host_name']} failed ({why}) and the plan stops on the first failure")
            waiting = []
        if not waiting and not active:
            await self._finish(plan, policy, await self.store.updates(plan_id), failed)
            return
        if failed and policy.stop_on_failure:
            return  # let the running ones end; start nothing more
        is_open, opens = window_state(policy.maintenance_window, self.clock())
        if not is_open:
            note = f"waiting for the maintenance window ({describe_window(policy.maintenance_window)}); " \
                   f"next opens {opens.isoformat(timespec='minutes') if opens else 'never'}"
            await self._set_waiting(plan, note)
            return
        free = policy.max_concurrent - len(active)
        notes = []
        for w in waiting:
            if free <= 0:
                break
            busy = await self._host_busy(w)
            if busy:
                notes.append(f"{w['host_name']}: {busy}")
                continue
            if await self._start(w, "start", f"update started (attempt {int(w['attempts']) + 1})"):
                free -= 1
        for r in [u for u in updates if u["state"] == "retrying"]:
            if as_dt(r["retry_at"]) is None or as_dt(r["retry_at"]) <= utcnow():
                await self._start(r, "start", f"update started again (attempt {int(r['attempts']) + 1})")
        await self._set_waiting(plan, "; ".join(notes) or None)

    async def _host_busy(self, upd: dict[str, Any]) -> str | None:
        run = await self.db.fetchrow(
            f"SELECT id, state, power_due_at FROM runs WHERE host_id = $1 AND (state IN "
            f"{sql_states(BUSY)} OR power_due_at IS NOT NULL) ORDER BY id DESC LIMIT 1",
            int(upd["host_id"]))
        if run is not None and run["state"] in BUSY:
            return f"vetting run {run['id']} is {run['state']}"
        if run is not None:  # the server still has to clear the boot override and power the host off
            return f"the clean-up after vetting run {run['id']} is due at {as_dt(run['power_due_at']).isoformat(timespec='seconds')}"
        other = await self.db.fetchval(
            "SELECT plan_id FROM firmware_updates WHERE host_id = $1 AND plan_id <> $2 AND state = 'running'",
            int(upd["host_id"]), int(upd["plan_id"]))
        return f"being updated by firmware plan {other}" if other else None

    async def _start(self, upd: dict[str, Any], move: str, message: str) -> bool:
        try:
            async with self.rt.unit() as u:
                row = await self.store.move_update(u, upd, move, text=message, phase=None, percent=None, message=None,
                                                   reason=None, retry_at=None, attempts=int(upd["attempts"]) + 1)
        except (Conflict, InvalidMove):
            return False
        self.mine.add(int(row["id"]))
        self.rt.spawn(lambda: self.update_host(row))
        return True

    async def _set_waiting(self, plan: dict[str, Any], note: str | None) -> None:
        if plan["waiting"] != note:
            await self.db.execute("UPDATE firmware_plans SET waiting = $2 WHERE id = $1", int(plan["id"]), note)

    async def _finish(self, plan: dict[str, Any], policy: Policy, updates: list[dict[str, Any]],
                      failed: list[dict[str, Any]]) -> None:
        done = sum(1 for u in updates if u["state"] == "completed" and not host_failed(u, policy))
        cancelled = sum(1 for u in updates if u["state"] == "cancelled")
        summary = f"{done} of {len(updates)} host(s) updated" + (f", {len(failed)} failed" if failed else "") + \
            (f", {cancelled} not started" if cancelled else "")
        async with self.rt.unit() as u:
            if failed or cancelled:
                await self.store.move_plan(u, plan, "fail", reason=summary, waiting=None,
                                           message=f"firmware plan {plan['id']} failed: {summary}")
            else:
                await self.store.move_plan(u, plan, "complete", reason=None, waiting=None,
                                           message=f"firmware plan {plan['id']} completed: {summary}")

    async def _fail_interrupted(self) -> None:
        """Fail running updates no process has touched for two minutes (a crash)."""
        now = utcnow()
        for row in await self.db.fetch("SELECT f.*, h.name AS host_name FROM firmware_updates f JOIN hosts h ON h.id = f.host_id "
                                       "WHERE f.state = 'running'"):
            if int(row["id"]) in self.mine:
                if (now - as_dt(row["updated_at"])).total_seconds() > TOUCH_S:
                    await self.db.execute("UPDATE firmware_updates SET updated_at = $2 WHERE id = $1", int(row["id"]), now)
                continue
            if (now - as_dt(row["updated_at"])).total_seconds() > STALE_S:
                try:
                    async with self.rt.unit() as u:
                        reason = (f"interrupted in phase {row['phase'] or 'start'}: the orchestrator stopped during the update; "
                                  "the BMC may have finished it on its own, check the host's firmware")
                        await self.store.move_update(u, row, "fail", reason=reason, text=f"update failed: {reason}")
                except Conflict:
                    continue

    # ------------------------------------------------------------------ one host
    async def update_host(self, upd: dict[str, Any]) -> None:
        update_id = int(upd["id"])
        try:
            await self._update_host(upd)
        finally:
            self.mine.discard(update_id)
            self.poke()

    async def _update_host(self, upd: dict[str, Any]) -> None:
        rt, store = self.rt, self.store
        update_id = int(upd["id"])
        plan = await store.plan(int(upd["plan_id"]))
        policy = msgspec.json.decode(plan["policy_json"], type=Policy)
        host = await self.rt.hosts.find(host_id=int(upd["host_id"]))
        arts = await store.plan_artifacts(int(plan["id"]))
        ctx: dict[str, Any] = {"artifacts": [], "seconds": {}}
        progress = Progress(self, update_id, ctx)
        provider = None
        try:
            # every image is checked before the BMC is contacted at all
            token = new_token("vf_")
            base = (rt.settings.firmware.image_base_url or rt.public_url).rstrip("/")
            images = [await store.verified_image(a, f"{base}/firmware/v1/images/{token}/{a['filename']}") for a in arts]
            provider = store.provider(host)
            await self._set(update_id, image_token_hash=token_hash(token))
            before = await provider.inventory()
            for art, image in zip(arts, images, strict=True):
                await self._install_one(provider, art, image, before, policy, progress, ctx)
                before = await provider.inventory()
        except Exception as exc:
            await self._failed(update_id, exc, policy, ctx)
            return
        finally:
            if provider is not None:
                with anyio.CancelScope(shield=True):
                    try:
                        await provider.close()
                    except Exception as exc:
                        log.warning("firmware.close_failed", update=update_id, error=str(exc))
        changes = [f"{a['component']} {a['before'] or '?'} → {a['after']}" if a["before"] != a["after"]
                   else f"{a['component']} already {a['after']}" for a in ctx["artifacts"]]
        # the vetting run is created before the update is marked done, so no step ever
        # sees the host finished and not yet handed over (the dispatcher holds the run
        # back until then: the host's update is still running)
        vet_run_id, vet_error = await self._vet(upd, plan, policy) if policy.vet_after_update else (None, None)
        await self._move(update_id, "succeed", f"firmware updated: {'; '.join(changes)}", phase="verify", percent=100,
                         ctx_json=jdump(ctx), message=f"done: {'; '.join(changes)}", vet_run_id=vet_run_id,
                         reason=vet_error)

    async def _install_one(self, provider: Any, art: dict[str, Any], image: Any, before: list[FirmwareItem],
                           policy: Policy, progress: Progress, ctx: dict[str, Any]) -> None:
        items = image_items(before, image)
        record = {"artifact_id": int(art["id"]), "component": art["component"],
                  "before": ", ".join(sorted({i.version for i in items})) or None, "after": art["version"]}
        ctx["artifacts"].append(record)
        if items and all(i.version == art["version"] for i in items):
            await progress("verify", 100, f"{art['component']} is already {art['version']}: nothing to install")
            return
        await self._set(progress.update_id, ctx_json=jdump({**ctx, "current_artifact": int(art["id"])}))
        started = time.monotonic()
        outcome = await provider.install(image, progress)
        ctx["seconds"][f"install {art['component']}"] = round(time.monotonic() - started, 1)
        await progress("install", 100, outcome.message)
        if art["reboot"] == "always" or (outcome.reboot_required and art["reboot"] != "never"):
            started = time.monotonic()
            await progress("reboot", None, "the image needs a reset to become active" if outcome.reboot_required
                           else "rebooting (the artifact asks for it)")
            await progress("reboot", 100, await provider.reboot(progress))
            ctx["seconds"][f"reboot {art['component']}"] = round(time.monotonic() - started, 1)
        started = time.monotonic()
        await progress("verify", None, f"reading the inventory until {art['component']} reports {art['version']}")
        deadline = time.monotonic() + policy.verify_timeout_s
        while True:
            now_items = image_items(await provider.inventory(), image)
            seen = ", ".join(f"{i.id} {i.version}" for i in now_items) or "nothing"
            if now_items and all(i.version == art["version"] for i in now_items):
                break
            if time.monotonic() > deadline:
                raise FirmwareUpdateError(f"after the update the BMC reports {seen}, expected {art['version']} "
                                          f"(waited {policy.verify_timeout_s:.0f}s: verify_timeout_s)")
            await anyio.sleep(self.rt.settings.firmware.interval_s)
        ctx["seconds"][f"verify {art['component']}"] = round(time.monotonic() - started, 1)
        record["after"] = art["version"]
        await progress("verify", 100, f"{art['component']} reports {art['version']}")

    async def _failed(self, update_id: int, exc: Exception, policy: Policy, ctx: dict[str, Any]) -> None:
        known = isinstance(exc, BootError | ChecksumMismatch | ValueError)  # their text is the reason
        reason = str(exc) if known else f"{type(exc).__name__}: {exc}"
        row = await self.db.fetchrow("SELECT * FROM firmware_updates WHERE id = $1", update_id)
        retry = not isinstance(exc, ChecksumMismatch) and int(row["attempts"]) <= policy.retries
        if retry:
            at = utcnow() + timedelta(seconds=policy.retry_delay_s)
            await self._move(update_id, "retry", f"attempt {row['attempts']} failed ({reason}); retrying at "
                             f"{at.isoformat(timespec='seconds')}", reason=reason, retry_at=at, ctx_json=jdump(ctx))
        else:
            await self._move(update_id, "fail", f"update failed in phase {row['phase'] or 'start'}: {reason}",
                             reason=reason, ctx_json=jdump(ctx))

    async def _vet(self, upd: dict[str, Any], plan: dict[str, Any], policy: Policy) -> tuple[int | None, str | None]:
        """Start the vetting run after the update: (its id, None) or (None, why not)."""
        vet = policy.vet_after_update
        assert vet is not None
        host = await self.rt.hosts.find(host_id=int(upd["host_id"]))
        try:
            run, _token = await self.rt.service.create_run(host, profile=vet.profile, non_destructive=vet.non_destructive,
                                                           stages=vet.stages, actor=f"firmware plan {plan['id']}")
        except ApiError as exc:
            async with self.rt.unit() as u:
                await u.event("firmware.vet_failed", f"{host['name']}: the vetting run after the update could not start: "
                              f"{exc.detail}", host_id=int(host["id"]), plan_id=int(plan["id"]), level="error")
            return None, f"vetting run not started: {exc.detail}"
        async with self.rt.unit() as u:
            await u.event("firmware.vet_started", f"{host['name']}: vetting run {run['id']} started after the update "
                          f"(profile {vet.profile})", host_id=int(host["id"]), plan_id=int(plan["id"]), run_id=int(run["id"]))
        return int(run["id"]), None

    # ------------------------------------------------------------------ row helpers
    async def _set(self, update_id: int, **fields: Any) -> None:
        fields["updated_at"] = utcnow()
        cols = list(fields)
        await self.db.execute(
            f"UPDATE firmware_updates SET {', '.join(f'{c} = ${i + 2}' for i, c in enumerate(cols))} WHERE id = $1",
            update_id, *[fields[c] for c in cols])

    async def _move(self, update_id: int, move: str, text: str, **fields: Any) -> dict[str, Any] | None:
        for _ in range(5):
            row = await self.db.fetchrow("SELECT f.*, h.name AS host_name FROM firmware_updates f "
                                         "JOIN hosts h ON h.id = f.host_id WHERE f.id = $1", update_id)
            try:
                async with self.rt.unit() as u:
                    return await self.store.move_update(u, row, move, text=text, **fields)
            except Conflict:
                continue  # a progress write raced us: read again
            except InvalidMove as exc:
                log.warning("firmware.move_refused", update=update_id, move=move, error=str(exc))
                return None
        return None


def host_failed(upd: dict[str, Any], policy: Policy) -> bool:
    """The update failed, or the vetting run after it failed, was cancelled, or could
    not start (pure over the row joined with its vetting run)."""
    if upd["state"] == UpdateState.failed.value:
        return True
    if upd["state"] != UpdateState.completed.value or policy.vet_after_update is None:
        return False
    return upd["vet_result"] in ("fail", "cancelled") or upd["vet_run_id"] is None


class Progress:
    """The provider's ``progress(phase, percent, message)``: stored on the update's row
    (the API shows it), an event on every change of phase or message."""

    def __init__(self, runner: CampaignRunner, update_id: int, ctx: dict[str, Any]) -> None:
        self.runner = runner
        self.update_id = update_id
        self.ctx = ctx
        self.last: tuple[str, str] | None = None

    async def __call__(self, phase: str, percent: int | None, message: str) -> None:
        runner = self.runner
        await runner._set(self.update_id, phase=phase, percent=percent, message=message[:2000])
        if (phase, message) != self.last:
            self.last = (phase, message)
            row = await runner.db.fetchrow("SELECT plan_id, host_id FROM firmware_updates WHERE id = $1", self.update_id)
            host = await runner.db.fetchval("SELECT name FROM hosts WHERE id = $1", int(row["host_id"]))
            async with runner.rt.unit() as u:
                await u.event("firmware.progress", f"{host}: {phase}: {message}"[:2000], host_id=int(row["host_id"]),
                              plan_id=int(row["plan_id"]), data={"update_id": self.update_id, "phase": phase, "percent": percent})
