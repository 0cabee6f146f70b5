"""Host pages: register a host, its registration and expected spec, run history, what was
repaired, the differences ignored for it, and starting a run.

Registration, spec changes and run starts go through the API's handlers (:mod:`.api`):
a refused value comes back as an :class:`~vetting_server.errors.ApiError` naming its
field, shown beside that field. The spec is edited in place (htmx swaps the view for a
form and back); a spec that does not validate comes back in the form with the message
under the text area (status 422, which the page's htmx config swaps in).
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.response import Redirect, Template

from vetting_core.safeyaml import YamlError, load_yaml

from ..api.limits import PathId
from ..api.views import host_out
from ..errors import ApiError
from ..runs import listing
from ..runs.service import jload
from ..schemas import HostCreate, HostUpdate, RunStart
from ..settings_service import profile_names
from . import api
from .inventory_diff import inventory_diff
from .render import is_htmx, page
from .runs import remember_token

HOST_FIELDS = ("name", "mac", "boot_provider", "boot_config", "expected_spec_yaml", "notes")


def field_errors(exc: ApiError, default: str) -> dict[str, str]:
    """``{field: message}`` of an API error (its ``extra.field``, else ``default``)."""
    field = exc.extra.get("field") if isinstance(exc.extra, dict) else None
    field = field if field in (*HOST_FIELDS, "profile", "stages", "host_id") else default
    return {field: exc.detail.removeprefix(f"{field}: ")}


def _boot_config(text: str) -> dict[str, Any]:
    """The boot config as typed: YAML (or JSON) of a mapping, empty for none."""
    if not text.strip():
        return {}
    try:
        value = load_yaml(text, what="boot config", max_bytes=64 * 1024)
    except YamlError as exc:
        raise ApiError(422, f"boot_config: {exc}", {"field": "boot_config"}) from None
    if not isinstance(value, dict):
        raise ApiError(422, "boot_config: write a mapping of the provider's settings (key: value lines)", {"field": "boot_config"})
    return value


class HostController(Controller):
    path = ""
    include_in_schema = False

    def _form(self, request: Request, values: dict[str, str], errors: dict[str, str], status: int) -> Template:
        rt = request.app.state.rt
        return page(request, "host_new.html.j2", status_code=status, values=values, errors=errors,
                    providers=sorted(rt.registry.boot_providers))

    @get("/hosts/new")
    async def new(self, request: Request) -> Template:
        return self._form(request, {"boot_provider": "manual"}, {}, 200)

    @post("/hosts")
    async def register(self, request: Request) -> Response:
        form = await request.form()
        values = {k: str(form.get(k, "")) for k in HOST_FIELDS}
        try:
            body = HostCreate(name=values["name"], mac=values["mac"], boot_provider=values["boot_provider"] or "manual",
                              boot_config=_boot_config(values["boot_config"]),
                              expected_spec_yaml=values["expected_spec_yaml"], notes=values["notes"])
            host = await api.register_host(request, body)
        except ApiError as exc:
            if exc.status_code not in (409, 422):
                raise
            return self._form(request, values, field_errors(exc, "name"), exc.status_code)
        return await self._page(request, host.id, agent_token=host.agent_token, status=201)

    @get("/hosts/{host_id:int}")
    async def show(self, request: Request, host_id: PathId) -> Template:
        return await self._page(request, host_id)

    async def _page(self, request: Request, host_id: int, *, agent_token: str | None = None, status: int = 200,
                    run_errors: dict[str, str] | None = None) -> Template:
        rt = request.app.state.rt
        host = host_out(await rt.hosts.get(host_id))
        inv = await listing.inventories(rt.db, host_id)
        diff = inventory_diff(jload(inv[1]["inventory_json"]), jload(inv[0]["inventory_json"])) if len(inv) == 2 else None
        ignores = await rt.hosts.ignores(host_id)
        return page(
            request, "host.html.j2", status_code=status, host=host, agent_token=agent_token,
            runs=await listing.runs(rt.db, host_id=host_id), inventory_diff=diff, inventory_runs=inv, ignores=ignores,
            profiles=profile_names(rt.registry), stages=sorted(rt.registry.stages),
            default_profile=rt.settings.runs.default_profile, run_errors=run_errors or {},
        )

    # ------------------------------------------------------------------ expected spec, in place
    @get("/ui/hosts/{host_id:int}/spec")
    async def spec_view(self, request: Request, host_id: PathId) -> Template:
        host = host_out(await request.app.state.rt.hosts.get(host_id))
        return page(request, "_spec_view.html.j2", host=host)

    @get("/ui/hosts/{host_id:int}/spec/edit")
    async def spec_edit(self, request: Request, host_id: PathId) -> Template:
        host = host_out(await request.app.state.rt.hosts.get(host_id))
        return page(request, "_spec_edit.html.j2", host=host, text=host.expected_spec_yaml, error=None)

    @post("/hosts/{host_id:int}/spec")
    async def spec_save(self, request: Request, host_id: PathId) -> Response:
        text = str((await request.form()).get("expected_spec_yaml", ""))
        try:
            host = await api.update_host(request, host_id, HostUpdate(expected_spec_yaml=text))
        except ApiError as exc:
            if exc.status_code != 422:
                raise
            host = host_out(await request.app.state.rt.hosts.get(host_id))
            error = field_errors(exc, "expected_spec_yaml").get("expected_spec_yaml", exc.detail)
            return page(request, "_spec_edit.html.j2", status_code=422, host=host, text=text, error=error)
        if is_htmx(request):
            return page(request, "_spec_view.html.j2", host=host, saved=True)
        return Redirect(path=f"/hosts/{host_id}", status_code=303)

    # ------------------------------------------------------------------ runs
    @post("/hosts/{host_id:int}/runs")
    async def start_run(self, request: Request, host_id: PathId) -> Response:
        form = await request.form()
        stages = [str(s) for s in form.getall("stages", []) if s] if hasattr(form, "getall") else []
        body = RunStart(host_id=host_id, profile=str(form.get("profile") or "") or None, stages=stages or None,
                        non_destructive=form.get("non_destructive") == "on")
        try:
            created = await api.start_run(request, body)
        except ApiError as exc:
            if exc.status_code not in (409, 422):
                raise
            return await self._page(request, host_id, status=exc.status_code, run_errors=field_errors(exc, "host_id"))
        remember_token(request, created.run.id, created)
        return Redirect(path=f"/runs/{created.run.id}", status_code=303)

    @post("/hosts/{host_id:int}/ignores/{ignore_id:int}/delete")
    async def unignore(self, request: Request, host_id: PathId, ignore_id: PathId) -> Response:
        rt = request.app.state.rt
        user = request.state.ui_session.user
        await rt.hosts.unignore(host_id, ignore_id, user)
        return Redirect(path=f"/hosts/{host_id}", status_code=303)

