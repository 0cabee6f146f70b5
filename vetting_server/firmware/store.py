"""Plans, artifacts and host updates in the database (both engines), and their moves.

Cold paths: a few rows per request or per campaign step, in plain SQL through
:mod:`vetting_server.db.database` like the run lifecycle (compare-and-set needs the row
count). Every move of a plan or a host update is applied with compare-and-set on
``(state, version)`` and written to the events table in the same transaction
(``plan_id`` and ``host_id`` set, so both histories show it); a host update's move is
also a notification (:data:`.states.NOTIFY`) once the transaction has committed.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import AsyncIterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import msgspec

from vetting_core.events import DEFAULT_SEVERITY, RunEvent
from vetting_core.firmware import FirmwareImage
from vetting_core.profiles import ProfileError, plan_run

from ..db.database import UniqueViolation, update_unchanged, utcnow
from ..errors import ApiError, conflict, not_found, unprocessable
from ..runs.service import jdump, jload
from ..runtime import Runtime, Unit
from .plans import PlanDocument, Policy
from .states import NOTIFY, PLAN_TERMINAL, InvalidMove, PlanState, UpdateState, plan_move, update_move

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
REBOOT = ("auto", "always", "never")


class Conflict(Exception):
    """A compare-and-set lost: someone else moved the row first."""


def safe_filename(name: str) -> str:
    return _UNSAFE.sub("_", Path(name).name).strip("._")[:120] or "firmware.bin"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class FirmwareStore:
    """Firmware plans, artifacts and host updates in the database, and every move of a
    plan or a host update (compare-and-set, with its event and notification)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.db = rt.db

    @property
    def dir(self) -> Path:
        return self.rt.data_dir / "firmware"

    # ------------------------------------------------------------------ artifacts
    async def add_artifact(
        self, chunks: AsyncIterator[bytes], *, component: str, version: str, filename: str, sha256: str | None,
        targets: list[str], reboot: str, notes: str, actor: str,
    ) -> dict[str, Any]:
        """Stream an image into ``data_dir/firmware/<sha256>.bin`` (temporary name, then
        renamed), checking the size limit as it arrives and the declared SHA-256 at the
        end; a file already in the store is kept once."""
        if reboot not in REBOOT:
            raise unprocessable("reboot", f"{reboot!r} is not one of {', '.join(REBOOT)}")
        limit = self.rt.settings.firmware.max_image_bytes
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".upload-{secrets.token_hex(8)}.tmp"
        h, size = hashlib.sha256(), 0
        try:
            with tmp.open("wb") as f:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise ApiError(413, f"the image is larger than firmware.max_image_bytes ({limit} bytes)")
                    h.update(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            digest = h.hexdigest()
            if size == 0:
                raise unprocessable("body", "the image is empty")
            if sha256 is not None and digest != sha256.lower():
                raise unprocessable("sha256", f"the uploaded image's SHA-256 is {digest}, not {sha256.lower()}: "
                                              "the file is damaged or not the one you meant")
            path = self.dir / f"{digest}.bin"
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        try:
            async with self.rt.unit() as u:
                art_id = await u.tx.fetchval(
                    "INSERT INTO firmware_artifacts (component, version, filename, sha256, size_bytes, path, targets_json, "
                    "reboot, notes, created_by, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
                    component, version, safe_filename(filename), digest, size, str(path), jdump(targets), reboot, notes,
                    actor, utcnow(),
                )
                await u.event("firmware.artifact_added", f"firmware artifact {art_id}: {component} {version} "
                              f"({safe_filename(filename)}, {size} bytes, sha256 {digest[:12]}…) added by {actor}", actor=actor)
        except UniqueViolation:
            existing = await self.db.fetchrow("SELECT * FROM firmware_artifacts WHERE sha256 = $1", digest)
            raise conflict(f"this image is already artifact {existing['id']} ({existing['component']} {existing['version']})",
                           artifact_id=int(existing["id"])) from None
        return await self.db.fetchrow("SELECT * FROM firmware_artifacts WHERE id = $1", int(art_id))

    async def verified_image(self, art: dict[str, Any], url: str) -> FirmwareImage:
        """The artifact as an image for a provider, after hashing the stored file again:
        a file changed on disk since it was added is refused before anything is pushed."""
        path = Path(art["path"])
        try:
            digest = await anyio.to_thread.run_sync(sha256_file, path)
        except OSError as exc:
            raise ChecksumMismatch(f"artifact {art['id']} ({art['filename']}): cannot read {path}: {exc.strerror or exc}") from None
        if digest != art["sha256"]:
            raise ChecksumMismatch(
                f"artifact {art['id']} ({art['component']} {art['version']}, {art['filename']}): the stored file's SHA-256 "
                f"is {digest}, expected {art['sha256']}; refusing to push it (re-add the image)"
            )
        return FirmwareImage(
            artifact_id=int(art["id"]), component=art["component"], version=art["version"], filename=art["filename"],
            sha256=digest, size_bytes=int(art["size_bytes"]), path=str(path), url=url,
            targets=tuple(jload(art["targets_json"], [])),
        )

    # ------------------------------------------------------------------ plans
    async def resolve_targets(self, doc: PlanDocument) -> list[dict[str, Any]]:
        hosts = await self.db.fetch("SELECT h.*, (SELECT r.inventory_json FROM runs r WHERE r.host_id = h.id "
                                    "AND r.inventory_json IS NOT NULL ORDER BY r.id DESC LIMIT 1) AS inventory_json "
                                    "FROM hosts h ORDER BY h.name")
        if doc.targets is not None:
            by_name = {h["name"]: h for h in hosts}
            missing = [n for n in doc.targets if n not in by_name]
            if missing:
                raise unprocessable("targets", f"no such host(s): {', '.join(missing[:20])}")
            return [by_name[n] for n in doc.targets]
        sel = doc.selector
        assert sel is not None
        chosen = []
        for h in hosts:
            if sel.name and not fnmatch(h["name"].lower(), sel.name.lower()):
                continue
            if sel.model and not any(fnmatch(m.lower(), sel.model.lower()) for m in _models(h)):
                continue
            chosen.append(h)
        if not chosen:
            raise unprocessable("selector", "no host matches the selector")
        return chosen

    async def create_plan(self, doc: PlanDocument, *, actor: str, source_run_id: int | None = None) -> dict[str, Any]:
        hosts = await self.resolve_targets(doc)
        no_provider = [h["name"] for h in hosts if self.provider_kind(h) is None]
        if no_provider:
            raise unprocessable("targets", f"host(s) without a firmware provider: {', '.join(no_provider[:20])} "
                                           "(PUT /api/v1/firmware/hosts/{id}/provider, or a redfish boot provider)")
        arts = []
        for i, ref in enumerate(doc.artifacts):
            row = await self.db.fetchrow("SELECT * FROM firmware_artifacts WHERE sha256 = $1", ref.sha256.lower())
            if row is None:
                raise unprocessable(f"artifacts[{i}].sha256", f"no artifact with SHA-256 {ref.sha256} in the store: "
                                    "add the image first (vetting firmware artifact add)")
            if (row["component"], row["version"]) != (ref.component, ref.version):
                raise unprocessable(f"artifacts[{i}]", f"the image with that SHA-256 is artifact {row['id']}, "
                                    f"{row['component']} {row['version']}, not {ref.component} {ref.version}")
            arts.append(row)
        vet = doc.policy.vet_after_update
        if vet is not None:
            try:
                plan_run(self.rt.registry, vet.profile, non_destructive=vet.non_destructive, only=vet.stages)
            except (ProfileError, KeyError) as exc:
                raise unprocessable("policy.vet_after_update", str(exc).strip('"')) from None
        now = utcnow()
        async with self.rt.unit() as u:
            plan_id = int(await u.tx.fetchval(
                "INSERT INTO firmware_plans (name, state, version, policy_json, document_json, source_run_id, created_by, "
                "created_at, updated_at) VALUES ($1, 'draft', 0, $2, $3, $4, $5, $6, $6) RETURNING id",
                doc.name, jdump(doc.policy), jdump(doc), source_run_id, actor, now,
            ))
            await u.tx.executemany(
                "INSERT INTO firmware_plan_artifacts (plan_id, ordinal, artifact_id) VALUES ($1, $2, $3)",
                [(plan_id, i, int(a["id"])) for i, a in enumerate(arts)],
            )
            await u.tx.executemany(
                "INSERT INTO firmware_updates (plan_id, host_id, priority, state, version, created_at, updated_at) "
                "VALUES ($1, $2, $3, 'pending', 0, $4, $4)",
                [(plan_id, int(h["id"]), i, now) for i, h in enumerate(hosts)],
            )
            what = ", ".join(f"{a['component']} {a['version']}" for a in arts)
            await u.event("firmware.plan_created", f"firmware plan {plan_id} {doc.name!r} created by {actor}: {what} on "
                          f"{len(hosts)} host(s)" + (" (approval required)" if doc.policy.approval_required else ""),
                          actor=actor, plan_id=plan_id, run_id=source_run_id,
                          data={"hosts": [h["name"] for h in hosts], "artifacts": [int(a["id"]) for a in arts]})
        return await self.plan(plan_id)

    async def plan(self, plan_id: int) -> dict[str, Any]:
        row = await self.db.fetchrow("SELECT * FROM firmware_plans WHERE id = $1", plan_id)
        if row is None:
            raise not_found(f"firmware plan {plan_id} not found")
        return row

    async def plan_artifacts(self, plan_id: int, db: Any = None) -> list[dict[str, Any]]:
        return await (db or self.db).fetch(
            "SELECT a.* FROM firmware_plan_artifacts pa JOIN firmware_artifacts a ON a.id = pa.artifact_id "
            "WHERE pa.plan_id = $1 ORDER BY pa.ordinal", plan_id)

    async def updates(self, plan_id: int, db: Any = None) -> list[dict[str, Any]]:
        return await (db or self.db).fetch(
            "SELECT f.*, h.name AS host_name, r.state AS vet_state, r.result AS vet_result, r.reason AS vet_reason "
            "FROM firmware_updates f JOIN hosts h ON h.id = f.host_id LEFT JOIN runs r ON r.id = f.vet_run_id "
            "WHERE f.plan_id = $1 ORDER BY f.priority, f.id", plan_id)

    async def act(self, plan_id: int, action: str, *, actor: str, reason: str = "") -> dict[str, Any]:
        """An operator's ``approve``, ``start``, ``pause`` or ``cancel`` of a plan. Cancel
        also cancels the hosts not started (or waiting to retry); a running flash ends
        on its own."""
        for _ in range(3):
            plan = await self.plan(plan_id)
            approval = msgspec.json.decode(plan["policy_json"], type=Policy).approval_required
            if action == "start" and plan["state"] == PlanState.draft.value and approval:
                raise conflict(f"firmware plan {plan_id} needs approval first (policy.approval_required): "
                               f"POST /api/v1/firmware/plans/{plan_id}/approve", state=plan["state"])
            note = f" ({reason})" if reason else ""
            try:
                async with self.rt.unit() as u:
                    if action == "approve":
                        new = await self.move_plan(u, plan, "approve", actor=actor, approved_by=actor, approved_at=utcnow(),
                                                   message=f"firmware plan {plan_id} approved by {actor}{note}")
                    elif action == "cancel":
                        new = await self.move_plan(u, plan, "cancel", actor=actor, reason=reason or f"cancelled by {actor}",
                                                   waiting=None, message=f"firmware plan {plan_id} cancelled by {actor}{note}")
                        for upd in await self.updates(plan_id, db=u.tx):
                            if upd["state"] in (UpdateState.pending.value, UpdateState.retrying.value):
                                await self.move_update(u, upd, "cancel", reason=f"plan cancelled by {actor}",
                                                       text=f"not updated: the plan was cancelled by {actor}")
                    else:
                        new = await self.move_plan(u, plan, action, actor=actor,
                                                   message=f"firmware plan {plan_id}: {action} by {actor}{note}")
            except Conflict:
                continue
            except InvalidMove as exc:
                raise conflict(f"firmware plan {plan_id} is {exc.state}; it cannot {action}", state=exc.state) from None
            self.rt.campaigns.poke()
            return new
        raise conflict(f"firmware plan {plan_id} is changing; retry")

    async def image(self, token_digest: str) -> dict[str, Any] | None:
        """The artifact a running update's BMC may fetch with this URL token, or None."""
        row = await self.db.fetchrow(
            "SELECT id, host_id, plan_id, ctx_json FROM firmware_updates WHERE image_token_hash = $1 AND state = 'running'",
            token_digest)
        current = jload(row["ctx_json"], {}).get("current_artifact") if row else None
        if current is None:
            return None
        art = await self.db.fetchrow("SELECT * FROM firmware_artifacts WHERE id = $1", int(current))
        return None if art is None else {**art, "update_id": int(row["id"]), "host_id": int(row["host_id"]),
                                         "plan_id": int(row["plan_id"])}

    async def move_plan(self, u: Unit, plan: dict[str, Any], move: str, *, actor: str | None = None,
                        message: str = "", **fields: Any) -> dict[str, Any]:
        new = plan_move(plan["state"], move)
        fields.update(state=new.value, version=int(plan["version"]) + 1, updated_at=utcnow())
        if new is PlanState.running and plan["started_at"] is None:
            fields.setdefault("started_at", fields["updated_at"])
        if new in PLAN_TERMINAL:
            fields.setdefault("completed_at", fields["updated_at"])
        await _cas(u, "firmware_plans", plan, fields)
        text = message or f"firmware plan {plan['id']}: {plan['state']} → {new.value}" + (f" by {actor}" if actor else "")
        await u.event(f"firmware.plan_{new.value}", text, plan_id=int(plan["id"]), actor=actor,
                      level="error" if new is PlanState.failed else "info",
                      data={"from": plan["state"], "to": new.value, "move": move})
        return {**plan, **fields}

    async def move_update(self, u: Unit, upd: dict[str, Any], move: str, *, text: str, level: str | None = None,
                          **fields: Any) -> dict[str, Any]:
        """Apply ``move`` to a host update (compare-and-set), write its event and queue
        its notification."""
        new = update_move(upd["state"], move)
        now = utcnow()
        fields.update(state=new.value, version=int(upd["version"]) + 1, updated_at=now)
        if new is UpdateState.running:
            fields.setdefault("started_at", now)
        if new in (UpdateState.completed, UpdateState.failed, UpdateState.cancelled):
            fields.setdefault("completed_at", now)
            fields.setdefault("image_token_hash", None)
        await _cas(u, "firmware_updates", upd, fields)
        row = {**upd, **fields}
        host = upd.get("host_name") or await u.tx.fetchval("SELECT name FROM hosts WHERE id = $1", int(upd["host_id"]))
        level = level or ("error" if new is UpdateState.failed else "warning" if new is UpdateState.retrying else "info")
        await u.event(f"firmware.{new.value}", f"{host}: {text}", host_id=int(upd["host_id"]), plan_id=int(upd["plan_id"]),
                      level=level, data={"update_id": int(upd["id"]), "from": upd["state"], "to": new.value,
                                         "phase": row.get("phase"), "reason": row.get("reason")})
        kind = NOTIFY[new]
        u.fx.run_events.append(RunEvent(
            kind=kind, severity=DEFAULT_SEVERITY[kind], ts=now, host_id=int(upd["host_id"]), host_name=host or "",
            stage=row.get("phase"), state=new.value, message=f"{host}: {text}", plan_id=int(upd["plan_id"]),
            url=f"{self.rt.public_url}/api/v1/firmware/plans/{upd['plan_id']}",
            data={"update_id": int(upd["id"]), **({"reason": row["reason"]} if row.get("reason") else {})},
        ))
        return row

    # ------------------------------------------------------------------ providers
    def provider_kind(self, host: dict[str, Any]) -> str | None:
        """The host's firmware provider: its own, else its boot provider's kind when that
        kind also updates firmware (a Redfish BMC does both)."""
        kind = host.get("firmware_provider")
        if kind:
            return kind
        return host["boot_provider"] if host["boot_provider"] in self.rt.registry.firmware_providers else None

    def provider(self, host: dict[str, Any]) -> Any:
        """A fresh provider object for ``host``; ``ValueError`` says what is missing."""
        kind = self.provider_kind(host)
        if kind is None:
            raise ValueError(f"host {host['name']} has no firmware provider")
        spec = self.rt.registry.firmware_providers.get(kind)
        if spec is None:
            known = ", ".join(sorted(self.rt.registry.firmware_providers)) or "none installed"
            raise ValueError(f"firmware provider {kind!r} of host {host['name']} is not installed (installed: {known})")
        if host.get("firmware_config_json"):
            raw = jload(host["firmware_config_json"], {})
        else:  # the boot config, less what only the boot provider knows (boot_mode…)
            raw = jload(host["boot_config_json"], {})
            if spec.config_type is not None and hasattr(spec.config_type, "__struct_fields__"):
                raw = {k: v for k, v in raw.items() if k in spec.config_type.__struct_fields__}
        config = msgspec.convert(raw, spec.config_type) if spec.config_type else raw
        return spec.factory(config)


    async def bmc_firmware_for_run(self, run_id: int, host_id: int) -> None:
        """Give run ``run_id``'s Firmware stage what the host's BMC reports, as the
        parameter ``bmc_firmware`` (or why it could not, as ``bmc_firmware_error``).

        The stage records these versions beside what it reads on the host and judges
        both against the spec: the BMC sees components the OS cannot (CPLD, PSU, the
        BMC itself without in-band IPMI), and after an update through the BMC it is
        the first to report the new version. Read before the host boots (the BMC is
        being driven anyway), bounded by ``firmware.bmc_inventory_timeout_s``."""
        stage = await self.db.fetchrow("SELECT id, params_json FROM stages WHERE run_id = $1 AND name = 'Firmware'", run_id)
        host = await self.rt.hosts.find(host_id=host_id)
        if stage is None or host is None or self.provider_kind(host) is None:
            return
        params = jload(stage["params_json"], {})
        provider = None
        try:
            provider = self.provider(host)
            with anyio.fail_after(self.rt.settings.firmware.bmc_inventory_timeout_s):
                items = await provider.inventory()
            params["bmc_firmware"] = [msgspec.to_builtins(i) for i in items]
            message = f"the BMC reports {len(items)} firmware item(s): " + \
                ", ".join(f"{i.id} {i.version}" for i in items[:10])
            level = "info"
        except Exception as exc:  # the run goes on: the stage says what it could not verify
            reason = str(exc) or type(exc).__name__
            params["bmc_firmware_error"] = reason[:1000]
            message, level = f"the BMC's firmware inventory could not be read: {reason}", "warning"
        finally:
            if provider is not None:
                with anyio.CancelScope(shield=True):
                    try:
                        await provider.close()
                    except Exception:
                        pass
        async with self.rt.unit() as u:
            await u.tx.execute("UPDATE stages SET params_json = $2 WHERE id = $1", int(stage["id"]), jdump(params))
            await u.event("firmware.bmc_inventory", message[:2000], run_id=run_id, host_id=host_id, level=level)


class ChecksumMismatch(Exception):
    """The stored image is not the one that was added: never retried, never pushed."""


def _models(host: dict[str, Any]) -> list[str]:
    out = []
    inv = jload(host.get("inventory_json"), {}) or {}
    product = (inv.get("system") or {}).get("product")
    if product:
        out.append(str(product))
    from vetting_core.specdiff import SpecError, parse_spec

    try:
        spec = parse_spec(host["expected_spec_yaml"]) if host["expected_spec_yaml"].strip() else None
    except SpecError:
        spec = None
    if spec is not None and spec.description:
        out.append(spec.description)
    return out


async def _cas(u: Unit, table: str, row: dict[str, Any], fields: dict[str, Any]) -> None:
    if not await update_unchanged(u.tx, table, row, fields):
        raise Conflict(f"{table} {row['id']} changed concurrently")


__all__ = ["ChecksumMismatch", "Conflict", "FirmwareStore", "InvalidMove", "safe_filename", "sha256_file"]
