"""The firmware API: artifacts, plans (create, approve, start, pause, cancel, progress),
hosts' firmware providers and live inventories, remediation from a run, and the image
route the BMCs download from.

Every ``/api/v1`` route needs an operator API token and writes what the operator did
to the events table. ``/firmware/v1/images/{token}/{filename}`` needs none: the token
in the path is a random capability issued for one host's update and accepted only
while that update runs (a BMC's ``SimpleUpdate`` cannot send a bearer token).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import anyio
import msgspec
from litestar import Controller, Request, get, post, put
from litestar.params import FromPath, JSONBody, Parameter, QueryParameter
from litestar.response import File

from vetting_core.boot import BootError
from vetting_core.model import INT64_MAX

from ..api.auth import operator, operator_guard, runtime
from ..db.database import as_dt
from ..errors import ApiError, not_found, unprocessable
from ..edge.fastbody import FastBody
from ..api.limits import PathId
from ..runs.service import jload
from ..schemas import EventOut
from ..api.views import event_out
from .plans import PlanDocument, PlanError, check_plan
from .remediation import offers, remediate
from .schemas import (
    ArtifactOut,
    FirmwareItemOut,
    HostFirmwareOut,
    PlanAction,
    PlanDetail,
    PlanOut,
    ProviderSet,
    RemediationOffer,
    RemediationOut,
    RemediationStart,
    UpdateOut,
    VersionChange,
)

def artifact_out(a: dict[str, Any]) -> ArtifactOut:
    return ArtifactOut(id=int(a["id"]), component=a["component"], version=a["version"], filename=a["filename"],
                       sha256=a["sha256"], size_bytes=int(a["size_bytes"]), targets=jload(a["targets_json"], []),
                       reboot=a["reboot"], notes=a["notes"], created_at=as_dt(a["created_at"]), created_by=a["created_by"])


def update_out(u: dict[str, Any]) -> UpdateOut:
    ctx = jload(u["ctx_json"], {})
    return UpdateOut(
        id=int(u["id"]), host_id=int(u["host_id"]), host_name=u["host_name"], priority=int(u["priority"]), state=u["state"],
        attempts=int(u["attempts"]), phase=u["phase"], percent=u["percent"], message=u["message"], reason=u["reason"],
        started_at=as_dt(u["started_at"]), completed_at=as_dt(u["completed_at"]), retry_at=as_dt(u["retry_at"]),
        changes=[msgspec.convert(c, VersionChange) for c in ctx.get("artifacts", [])],
        vet_run_id=u["vet_run_id"], vet_state=u["vet_state"], vet_result=u["vet_result"],
    )


async def plan_out(rt: Any, p: dict[str, Any]) -> PlanOut:
    counts = await rt.db.fetch("SELECT state, count(*) AS n FROM firmware_updates WHERE plan_id = $1 GROUP BY state", int(p["id"]))
    return PlanOut(
        id=int(p["id"]), name=p["name"], state=p["state"], policy=jload(p["policy_json"], {}),
        hosts={r["state"]: int(r["n"]) for r in counts}, created_at=as_dt(p["created_at"]), reason=p["reason"],
        waiting=p["waiting"], source_run_id=p["source_run_id"], created_by=p["created_by"], approved_by=p["approved_by"],
        approved_at=as_dt(p["approved_at"]), started_at=as_dt(p["started_at"]), completed_at=as_dt(p["completed_at"]),
    )


async def plan_detail(rt: Any, plan_id: int) -> PlanDetail:
    store = rt.firmware
    p = await store.plan(plan_id)
    return PlanDetail(plan=await plan_out(rt, p), artifacts=[artifact_out(a) for a in await store.plan_artifacts(plan_id)],
                      updates=[update_out(u) for u in await store.updates(plan_id)])


class FirmwareArtifactController(Controller):
    """Its own controller: the body limit is ``firmware.max_image_bytes`` (set by the app)."""

    guards = [operator_guard]
    path = "/api/v1/firmware/artifacts"
    tags = ["firmware"]

    @post("", status_code=201, summary="Add a firmware image to the artifact store (the body is the image)")
    async def add_artifact(
        self, request: Request,
        component: str = Parameter(min_length=1, max_length=100, description="spec component: bios, bmc, nic…"),
        version: str = Parameter(min_length=1, max_length=100),
        filename: str = Parameter(min_length=1, max_length=200),
        sha256: str | None = Parameter(default=None, pattern="^[0-9a-fA-F]{64}$", description="refused when the body differs"),
        target: list[str] | None = Parameter(default=None, max_items=20,
                                             description="inventory id/name globs it applies to (default: every item of the component)"),
        reboot: str = Parameter(default="auto", pattern="^(auto|always|never)$"),
        notes: str = Parameter(default="", max_length=2000),
    ) -> ArtifactOut:
        user = await operator(request)
        rt = runtime(request)
        if any(not t or len(t) > 200 for t in target or []):
            raise unprocessable("target", "each target is a glob of 1 to 200 characters")
        row = await rt.firmware.add_artifact(request.stream(), component=component, version=version, filename=filename,
                                             sha256=sha256, targets=list(target or []), reboot=reboot, notes=notes,
                                             actor=user["name"])
        return artifact_out(row)

    @get("", summary="List the firmware artifacts")
    async def list_artifacts(self, request: Request) -> list[ArtifactOut]:
        await operator(request)
        rows = await runtime(request).db.fetch("SELECT * FROM firmware_artifacts ORDER BY component, version, id")
        return [artifact_out(a) for a in rows]


class FirmwareController(Controller):
    guards = [operator_guard]
    path = "/api/v1/firmware"
    tags = ["firmware"]

    @post("/plans", status_code=201, summary="Create a firmware plan (targets or selector, artifacts, policy)", dto=FastBody[PlanDocument], return_dto=None)
    async def create_plan(self, request: Request, data: JSONBody[PlanDocument]) -> PlanDetail:
        user = await operator(request)
        rt = runtime(request)
        try:
            check_plan(data)
        except PlanError as exc:
            field = str(exc).split(":", 1)[0].removeprefix("$.")
            raise ApiError(422, str(exc).removeprefix("$."), {"field": field}) from None
        plan = await rt.firmware.create_plan(data, actor=user["name"])
        return await plan_detail(rt, int(plan["id"]))

    @get("/plans", summary="List firmware plans")
    async def list_plans(self, request: Request, plan_state: str | None = QueryParameter(name="state", default=None, max_length=20),
                         limit: int = Parameter(default=100, ge=1, le=1000)) -> list[PlanOut]:
        await operator(request)
        rt = runtime(request)
        if plan_state is None:
            rows = await rt.db.fetch("SELECT * FROM firmware_plans ORDER BY id DESC LIMIT $1", limit)
        else:
            rows = await rt.db.fetch("SELECT * FROM firmware_plans WHERE state = $1 ORDER BY id DESC LIMIT $2", plan_state, limit)
        return [await plan_out(rt, p) for p in rows]

    @get("/plans/{plan_id:int}", summary="A plan and the progress of each host")
    async def get_plan(self, request: Request, plan_id: PathId) -> PlanDetail:
        await operator(request)
        return await plan_detail(runtime(request), plan_id)

    @get("/plans/{plan_id:int}/events", summary="A plan's history: every move of the plan and of its hosts")
    async def plan_events(self, request: Request, plan_id: PathId, after: int = Parameter(default=0, ge=0, le=INT64_MAX),
                          limit: int = Parameter(default=500, ge=1, le=5000)) -> list[EventOut]:
        await operator(request)
        rt = runtime(request)
        await rt.firmware.plan(plan_id)
        rows = await rt.db.fetch("SELECT * FROM events WHERE plan_id = $1 AND id > $2 ORDER BY id LIMIT $3", plan_id, after, limit)
        return [event_out(r) for r in rows]

    async def _act(self, request: Request, plan_id: int, action: str, data: PlanAction | None) -> PlanDetail:
        user = await operator(request)
        rt = runtime(request)
        await rt.firmware.act(plan_id, action, actor=user["name"], reason=data.reason if data else "")
        return await plan_detail(rt, plan_id)

    @post("/plans/{plan_id:int}/approve", status_code=200, summary="Approve a plan (policy.approval_required)", dto=FastBody[PlanAction], return_dto=None)
    async def approve(self, request: Request, plan_id: PathId, data: JSONBody[PlanAction | None] = None) -> PlanDetail:
        return await self._act(request, plan_id, "approve", data)

    @post("/plans/{plan_id:int}/start", status_code=200, summary="Start (or resume) a plan", dto=FastBody[PlanAction], return_dto=None)
    async def start(self, request: Request, plan_id: PathId, data: JSONBody[PlanAction | None] = None) -> PlanDetail:
        return await self._act(request, plan_id, "start", data)

    @post("/plans/{plan_id:int}/pause", status_code=200, summary="Pause a plan: no more hosts start; running ones finish", dto=FastBody[PlanAction], return_dto=None)
    async def pause(self, request: Request, plan_id: PathId, data: JSONBody[PlanAction | None] = None) -> PlanDetail:
        return await self._act(request, plan_id, "pause", data)

    @post("/plans/{plan_id:int}/cancel", status_code=200, summary="Cancel a plan: hosts not started are cancelled", dto=FastBody[PlanAction], return_dto=None)
    async def cancel(self, request: Request, plan_id: PathId, data: JSONBody[PlanAction | None] = None) -> PlanDetail:
        return await self._act(request, plan_id, "cancel", data)

    @put("/hosts/{host_id:int}/provider", summary="Set a host's firmware provider (kind null: use its boot provider's)",
         dto=FastBody[ProviderSet], return_dto=None)
    async def set_provider(self, request: Request, host_id: PathId, data: JSONBody[ProviderSet]) -> HostFirmwareOut:
        user = await operator(request)
        rt = runtime(request)
        host = await rt.hosts.get(host_id)
        if data.kind is not None:
            spec = rt.registry.firmware_providers.get(data.kind)
            if spec is None:
                known = ", ".join(sorted(rt.registry.firmware_providers)) or "none installed"
                raise unprocessable("kind", f"unknown firmware provider {data.kind!r} (installed: {known})")
            if spec.config_type is not None:
                try:
                    msgspec.convert(data.config, spec.config_type)
                except msgspec.ValidationError as exc:
                    raise unprocessable("config", str(exc)) from None
        host = await rt.hosts.set_firmware_provider(host, data.kind, data.config, user["name"])
        return _host_firmware(rt, host, [])

    @get("/hosts/{host_id:int}/inventory", summary="Read a host's firmware inventory from its BMC now")
    async def inventory(self, request: Request, host_id: PathId) -> HostFirmwareOut:
        await operator(request)
        rt = runtime(request)
        host = await rt.hosts.get(host_id)
        try:
            provider = rt.firmware.provider(host)
        except ValueError as exc:
            raise ApiError(409, str(exc)) from None
        try:
            with anyio.fail_after(rt.settings.firmware.bmc_inventory_timeout_s):
                items = await provider.inventory()
        except (BootError, TimeoutError) as exc:
            raise ApiError(502, f"reading the firmware inventory of {host['name']} failed: {exc or 'timed out'}") from None
        finally:
            await provider.close()
        return _host_firmware(rt, host, items)


def _host_firmware(rt: Any, host: dict[str, Any], items: list[Any]) -> HostFirmwareOut:
    kind = rt.firmware.provider_kind(host)
    source = "none" if kind is None else "firmware_config" if host["firmware_config_json"] else "boot_config"
    return HostFirmwareOut(host_id=int(host["id"]), host_name=host["name"], provider=kind, config_from=source,
                           items=[FirmwareItemOut(id=i.id, name=i.name, version=i.version, component=i.component,
                                                  updateable=i.updateable) for i in items])


class RemediationController(Controller):
    guards = [operator_guard]
    path = "/api/v1/runs"
    tags = ["firmware"]

    @get("/{run_id:int}/firmware-remediation", summary="Update and re-vet: what would fix this run's firmware mismatches")
    async def show(self, request: Request, run_id: PathId) -> RemediationOut:
        await operator(request)
        o = await offers(runtime(request), run_id)
        return RemediationOut(
            run_id=o["run_id"], host_id=o["host_id"], host_name=o["host_name"], available=o["available"],
            why_not=o["why_not"], plan_ids=o["plan_ids"],
            offers=[RemediationOffer(component=x["component"], field=x["field"], actual=x["actual"], expected=x["expected"],
                                     artifact=artifact_out(x["artifact"]) if x["artifact"] else None) for x in o["offers"]],
        )

    @post("/{run_id:int}/firmware-remediation", status_code=201,
          summary="Update and re-vet: a one-host plan that updates through the BMC, then starts a new vetting run",
          dto=FastBody[RemediationStart], return_dto=None)
    async def start(self, request: Request, run_id: PathId,
                    data: JSONBody[RemediationStart | None] = None) -> PlanDetail:
        user = await operator(request)
        rt = runtime(request)
        body = data or RemediationStart()
        plan = await remediate(rt, run_id, actor=user["name"], approval_required=body.approval_required, reason=body.reason)
        return await plan_detail(rt, int(plan["id"]))


class FirmwareImageController(Controller):
    path = "/firmware/v1/images"
    include_in_schema = False

    @get("/{token:str}/{filename:str}", summary="The image a BMC downloads during its update (SimpleUpdate)")
    async def image(self, request: Request, token: FromPath[str], filename: FromPath[str]) -> File:
        rt = runtime(request)
        art = await rt.firmware.image(hashlib.sha256(token.encode()).hexdigest()) if len(token) < 200 else None
        if art is None or art["filename"] != filename or not Path(art["path"]).is_file():
            raise not_found("no such firmware image (the link is valid only while its host's update runs)")
        client = request.client.host if request.client else None
        async with rt.unit() as u:
            await u.event("firmware.image_served", f"{art['filename']} ({art['size_bytes']} bytes) served to {client} "
                          "for the update", host_id=art["host_id"], plan_id=art["plan_id"],
                          data={"update_id": art["update_id"], "artifact_id": int(art["id"]), "client": client})
        return File(path=art["path"], filename=art["filename"], media_type="application/octet-stream")
