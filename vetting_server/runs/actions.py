"""What an operator (or a failed run) does to a run: holds with their SSH key, cancel,
release, override and retry of the failed stage."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio

from vetting_core.protocol import HoldReply, HoldRequest
from vetting_core.statemachine import InvalidTransition, RunEventType, RunState

from .artifacts import hold_dir
from ..db.database import Database, utcnow
from ..errors import ApiError, conflict, not_found
from ..runtime import Runtime, Unit
from .retry import retry_on_conflict
from .rows import jdump, jload

E = RunEventType


class OperatorActions:
    """Holds and operator actions (a mixin of :class:`.service.RunService`)."""

    rt: Runtime
    db: Database

    # ---------------------------------------------------------------- hold / operator actions
    async def hold(self, run_id: int, body: HoldRequest, peer_ip: str | None) -> HoldReply:
        if not self.rt.settings.hold.enabled:
            raise conflict("holds are disabled on this server (hold.enabled: false)")
        run = await self.db.fetchrow("SELECT * FROM runs WHERE id = $1", run_id)
        if run["state"] not in (RunState.Failed.value, RunState.FailedHolding.value):
            raise conflict(f"run {run_id} is {run['state']}; a hold opens only after a failure")
        ip = (body.ip or peer_ip or "").strip()[:100]
        key_dir = hold_dir(self.rt, run_id)
        priv, pub = await _ssh_keypair(key_dir, f"vetting-hold-run-{run_id}")
        expires = utcnow() + timedelta(hours=self.rt.settings.hold.key_ttl_hours)
        digest = hashlib.sha256(priv.read_bytes()).hexdigest()
        async with self.rt.unit() as u:
            run = await u.tx.fetchrow("SELECT * FROM runs WHERE id = $1", run_id)
            try:
                run = await self.transition(
                    u, run, E.hold_opened, stage=run["failed_stage"], hold_ip=ip or None, hold_expires_at=expires,
                    message=f"hold opened: ssh root@{ip}" + (f" ({body.reason})" if body.reason else ""),
                )
            except InvalidTransition:
                raise conflict(f"run {run_id} is {run['state']}; a hold opens only after a failure") from None
            await u.tx.execute(
                "INSERT INTO artifacts (run_id, stage_id, kind, path, sha256, size_bytes, location, created_at) "
                "VALUES ($1, NULL, 'hold_key', $2, $3, $4, 'server', $5)",
                run_id, str(priv), digest, priv.stat().st_size, utcnow(),
            )
        return HoldReply(
            authorized_key=pub, expires_at=expires, user="root",
            ssh_command=f"ssh -i {priv} root@{ip}" if ip else "",
        )

    async def operator_action(self, run_id: int, action: str, *, actor: str, reason: str = "", flags: dict[str, Any] | None = None) -> dict[str, Any]:
        async def attempt() -> dict[str, Any]:
            async with self.rt.unit() as u:
                run = await u.tx.fetchrow("SELECT * FROM runs WHERE id = $1", run_id)
                if run is None:
                    raise not_found(f"run {run_id} not found")
                try:
                    if action == "cancel":
                        new = await self.transition(u, run, E.cancel, actor=actor, reason=reason or f"cancelled by {actor}", retry_stage=None)
                    elif action == "release":
                        new = await self.transition(u, run, E.release, actor=actor, message=f"released by {actor}" + (f": {reason}" if reason else ""))
                    elif action == "override":
                        new = await self._override(u, run, actor, flags or {"wipe": True}, reason)
                    elif action == "retry_stage":  # the failed stage again, no gate overridden
                        new = await self._override(u, run, actor, {}, reason)
                    else:
                        raise ValueError(action)
                except InvalidTransition:
                    raise conflict(f"run {run_id} is {run['state']}; cannot {action} it", state=run["state"]) from None
                await u.event(
                    f"audit.{action}", f"{action} by {actor}" + (f": {reason}" if reason else ""),
                    run_id=run_id, host_id=int(run["host_id"]), actor=actor, data={"flags": flags} if flags else None,
                )
            return new

        return await retry_on_conflict(run_id, attempt)

    async def _override(self, u: Unit, run: dict[str, Any], actor: str, flags: dict[str, Any], reason: str) -> dict[str, Any]:
        stage_name = run["failed_stage"]
        if run["state"] != RunState.FailedHolding.value:
            raise InvalidTransition(RunState(run["state"]), E.override)
        stage = await u.tx.fetchrow("SELECT * FROM stages WHERE run_id = $1 AND name = $2", int(run["id"]), stage_name)
        if stage is None:
            raise conflict(f"run {run['id']} has no failed stage to retry")
        if stage["runs_on"] == "orchestrator":
            raise conflict(f"stage {stage_name} runs on the orchestrator and cannot be retried; fix the host and start a new run")
        merged = {**jload(run["override_flags_json"], {}), **flags}
        await u.tx.execute(
            "UPDATE stages SET attempt = attempt + 1, state = 'running', reason = NULL, started_at = $2, completed_at = NULL WHERE id = $1",
            int(stage["id"]), utcnow(),
        )
        new = await self.transition(
            u, run, E.override, actor=actor, stage=stage_name, retry_stage=stage_name, current_stage=stage_name,
            failed_stage=None, result=None, reason=None, completed_at=None, override_flags_json=jdump(merged),
            message=f"override by {actor}: retry {stage_name} with {jdump(flags)}" if flags
            else f"retry of {stage_name} by {actor}" + (f": {reason}" if reason else ""),
        )
        eng = self.rt.engines.get(int(run["id"]))
        if eng is not None:
            eng.reset_baselines(stage_name)
        return new


async def _ssh_keypair(key_dir: Path, comment: str) -> tuple[Path, str]:
    """A fresh ed25519 key pair for one hold (re-issued on every /hold)."""
    key_dir.mkdir(parents=True, exist_ok=True)
    priv = key_dir / "id_ed25519"
    for p in (priv, priv.with_suffix(".pub")):
        p.unlink(missing_ok=True)
    try:
        await anyio.run_process(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(priv)])
    except (OSError, Exception) as exc:
        raise ApiError(500, f"could not generate the hold SSH key with ssh-keygen: {exc}") from None
    priv.chmod(0o600)
    return priv, priv.with_suffix(".pub").read_text().strip()
