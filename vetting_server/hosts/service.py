"""The host service: list, show, register, change and delete hosts, replace a host's
agent token, set its firmware provider, and ignore expected-spec differences for it —
for the operator API and the web UI alike.

Each change commits with its ``audit.*`` event in one transaction; a change of the MAC
allowlist (register, MAC change, delete) refreshes the PXE server after the commit.
Refusals are :class:`~vetting_server.errors.ApiError`: 404 for an unknown host, 409 for a
taken name or MAC or a host with a run in progress, 422 naming the field for a refused
value. Queries are Piccolo's, run on the server's connections (:mod:`..db.orm`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from vetting_core.statemachine import ACTIVE, RunState

from ..db import orm
from ..db.database import UniqueViolation, utcnow
from ..db.tables import Hosts, Runs, SpecDiffs, SpecIgnores
from ..errors import ApiError, conflict, not_found
from ..runs.rows import jdump
from ..schemas import HostCreate, HostUpdate
from ..security import new_token, token_hash
from .rules import (
    FieldError,
    normalize_mac,
    parse_host_spec,
    validate_boot,
    validate_name,
)

if TYPE_CHECKING:
    from ..runtime import Runtime

_DELETE_BLOCKED_BY = [s.value for s in ACTIVE - {RunState.Registered}]


def _field_error(exc: FieldError) -> ApiError:
    return ApiError(422, str(exc), {"field": exc.field})


class HostService:
    """Owns the ``hosts`` rows and the ``spec_ignores`` of each host: every read and change
    the operator API, the web UI, the firmware API and run planning make of them."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def page(self, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        """Hosts by name from ``offset``, and how many there are."""
        db = self.rt.db
        rows = await orm.rows(db, Hosts.select().order_by(Hosts.name).limit(limit).offset(offset))
        return rows, int(await orm.value(db, Hosts.count()))

    async def get(self, host_id: int) -> dict[str, Any]:
        row = await orm.row(self.rt.db, Hosts.select().where(Hosts.id == host_id))
        if row is None:
            raise not_found(f"host {host_id} not found")
        return row

    async def find(self, *, host_id: int | None = None, name: str | None = None) -> dict[str, Any] | None:
        """The host with this id, else the one with this name; ``None`` if there is none."""
        where = Hosts.id == host_id if host_id is not None else Hosts.name == name
        return await orm.row(self.rt.db, Hosts.select().where(where))

    async def create(self, data: HostCreate, actor: str) -> tuple[dict[str, Any], str]:
        """Register a host; the new row and its host-mode agent token (shown once)."""
        try:
            name = validate_name(data.name)
            mac = normalize_mac(data.mac)
            parse_host_spec(data.expected_spec_yaml)
            validate_boot(self.rt.registry, data.boot_provider, data.boot_config)
        except FieldError as exc:
            raise _field_error(exc) from None
        token = new_token("vh_")
        now = utcnow()
        try:
            async with self.rt.unit() as u:
                host_id = await orm.insert(
                    u.tx, Hosts, name=name, mac=mac, boot_provider=data.boot_provider,
                    boot_config_json=jdump(data.boot_config), expected_spec_yaml=data.expected_spec_yaml,
                    notes=data.notes[:10000], agent_token_hash=token_hash(token), created_at=now, updated_at=now,
                )
                await u.event("audit.host_created", f"host {name} ({mac}) registered by {actor}",
                              host_id=host_id, actor=actor, data={"boot_provider": data.boot_provider})
        except UniqueViolation:
            await self._taken(name, mac)
            raise
        await self.rt.pxe.refresh()  # the MAC allowlist of the PXE server
        return await self.get(host_id), token

    async def update(self, host_id: int, data: HostUpdate, actor: str) -> dict[str, Any]:
        """Change the fields ``data`` names; the host as it is afterwards."""
        old = await self.get(host_id)
        fields: dict[str, Any] = {}
        try:
            if data.name is not None:
                fields["name"] = validate_name(data.name)
            if data.mac is not None:
                fields["mac"] = normalize_mac(data.mac)
            if data.expected_spec_yaml is not None:
                parse_host_spec(data.expected_spec_yaml)
                fields["expected_spec_yaml"] = data.expected_spec_yaml
            if data.notes is not None:
                fields["notes"] = data.notes[:10000]
            if data.boot_provider is not None or data.boot_config is not None:
                provider = data.boot_provider or old["boot_provider"]
                config = data.boot_config if data.boot_config is not None else msgspec.json.decode(old["boot_config_json"])
                validate_boot(self.rt.registry, provider, config)
                fields["boot_provider"] = provider
                fields["boot_config_json"] = jdump(config)
        except FieldError as exc:
            raise _field_error(exc) from None
        if not fields:
            return old
        changed = [c.removesuffix("_json") for c in fields]
        fields["updated_at"] = utcnow()
        try:
            async with self.rt.unit() as u:
                await orm.run(u.tx, Hosts.update({getattr(Hosts, c): v for c, v in fields.items()}).where(Hosts.id == host_id))
                await u.event("audit.host_changed", f"host {old['name']} changed by {actor}: {', '.join(changed)}",
                              host_id=host_id, actor=actor, data={"changed": changed})
        except UniqueViolation:
            await self._taken(fields.get("name"), fields.get("mac"), exclude=host_id)
            raise
        if "mac" in fields:
            await self.rt.pxe.refresh()
        return await self.get(host_id)

    async def delete(self, host_id: int, actor: str) -> None:
        """Delete a host and its run history (refused while a run is in progress)."""
        host = await self.get(host_id)
        active = await orm.value(
            self.rt.db, Runs.count().where((Runs.host_id == host_id) & Runs.state.is_in(_DELETE_BLOCKED_BY))
        )
        if active:
            raise conflict(f"host {host['name']} has a run in progress; cancel it first")
        async with self.rt.unit() as u:
            await orm.run(u.tx, Hosts.delete().where(Hosts.id == host_id))
            await u.event("audit.host_deleted", f"host {host['name']} ({host['mac']}) deleted by {actor}",
                          actor=actor, data={"host_id": host_id, "name": host["name"], "mac": host["mac"]})
        await self.rt.pxe.refresh()

    async def rotate_token(self, host_id: int, actor: str) -> tuple[dict[str, Any], str]:
        """Replace the host-mode agent token; the host and the new token (shown once)."""
        host = await self.get(host_id)
        token = new_token("vh_")
        async with self.rt.unit() as u:
            await orm.run(u.tx, Hosts.update({Hosts.agent_token_hash: token_hash(token), Hosts.updated_at: utcnow()})
                          .where(Hosts.id == host_id))
            await u.event("audit.host_token", f"host agent token of {host['name']} replaced by {actor}",
                          host_id=host_id, actor=actor)
        return await self.get(host_id), token

    async def set_firmware_provider(self, host: dict[str, Any], kind: str | None, config: dict[str, Any],
                                    actor: str) -> dict[str, Any]:
        """Set which firmware provider updates ``host`` (``None``: its boot provider's);
        the host afterwards. ``kind`` and ``config`` are checked by the caller."""
        async with self.rt.unit() as u:
            await orm.run(u.tx, Hosts.update({
                Hosts.firmware_provider: kind, Hosts.firmware_config_json: jdump(config) if kind else None,
                Hosts.updated_at: utcnow(),
            }).where(Hosts.id == host["id"]))
            await u.event("audit.host_firmware_provider", f"firmware provider of {host['name']} set to "
                          f"{kind or 'its boot provider'} by {actor}", host_id=host["id"], actor=actor)
        return await self.get(host["id"])

    # ------------------------------------------------------------ spec differences ignored
    async def ignores(self, host_id: int) -> list[dict[str, Any]]:
        """The expected-spec differences ignored for the host, oldest first."""
        return await orm.rows(self.rt.db, SpecIgnores.select().where(SpecIgnores.host_id == host_id).order_by(SpecIgnores.id))

    async def ignore_difference(self, run_id: int, diff_id: int, reason: str, actor: str) -> None:
        """Ignore a spec difference a run found, for its host's later runs too."""
        d = SpecDiffs
        diff = await orm.row(self.rt.db, d.select(
            *d.all_columns(), d.run_id.host_id.as_alias("host_id"), d.run_id.host_id.name.as_alias("host_name"),
        ).where((d.id == diff_id) & (d.run_id == run_id)))
        if diff is None:
            raise not_found(f"run {run_id} has no spec difference {diff_id}")
        host_id = int(diff["host_id"])
        async with self.rt.unit() as u:
            known = await orm.value(u.tx, SpecIgnores.select(SpecIgnores.id).where(
                (SpecIgnores.host_id == host_id) & (SpecIgnores.field == diff["field"])
                & ((SpecIgnores.actual == diff["actual"]) | SpecIgnores.actual.is_null())))
            if known is None:
                await orm.insert(u.tx, SpecIgnores, host_id=host_id, field=diff["field"], actual=diff["actual"],
                                 expected=diff["expected"], reason=reason, created_by=actor, created_at=utcnow())
            await orm.run(u.tx, d.update({d.ignored: True}).where(d.id == diff_id))
            await u.event(
                "audit.spec_ignored",
                f"{diff['field']} (expected {diff['expected']}, found {diff['actual']}) ignored for {diff['host_name']} "
                f"by {actor}" + (f": {reason}" if reason else ""),
                run_id=run_id, host_id=host_id, actor=actor,
                data={"field": diff["field"], "expected": diff["expected"], "actual": diff["actual"], "reason": reason})

    async def unignore(self, host_id: int, ignore_id: int, actor: str) -> None:
        """Check an ignored difference again on the host's next runs."""
        row = await orm.row(self.rt.db, SpecIgnores.select().where(
            (SpecIgnores.id == ignore_id) & (SpecIgnores.host_id == host_id)))
        if row is None:
            raise not_found(f"host {host_id} has no ignored difference {ignore_id}")
        host = await self.get(host_id)
        async with self.rt.unit() as u:
            await orm.run(u.tx, SpecIgnores.delete().where(SpecIgnores.id == ignore_id))
            await u.event("audit.spec_unignored", f"{row['field']} is checked again on {host['name']} ({actor})",
                          host_id=host_id, actor=actor, data={"field": row["field"], "actual": row["actual"]})

    async def _taken(self, name: str | None, mac: str | None, exclude: int = 0) -> None:
        """After a unique violation: say which of name and MAC another host has."""
        db = self.rt.db
        if name and await orm.value(db, Hosts.select(Hosts.id).where((Hosts.name == name) & (Hosts.id != exclude))):
            raise ApiError(409, f"name: a host named {name!r} already exists", {"field": "name"})
        if mac and await orm.value(db, Hosts.select(Hosts.id).where((Hosts.mac == mac) & (Hosts.id != exclude))):
            raise ApiError(409, f"mac: a host with MAC {mac} already exists", {"field": "mac"})
