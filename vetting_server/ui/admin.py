"""Settings (the runtime keys the file lets the UI override) and the audit log."""

from __future__ import annotations

from typing import Any

import msgspec
import yaml
from litestar import Controller, Request, Response, get, post
from litestar.params import FromPath
from litestar.response import Redirect, Template

from vetting_core.config import RUNTIME_KEYS

from ..api.views import event_out
from ..errors import not_found
from ..runs import listing
from ..settings_service import SettingError, profile_names
from .render import page


def as_yaml(value: Any) -> str:
    """A value as the operator types it (YAML: the file's own syntax)."""
    if isinstance(value, (dict, list)):
        return yaml.safe_dump(value, sort_keys=False, default_flow_style=False).strip()
    return msgspec.json.encode(value).decode() if isinstance(value, str) and not value.strip() else str(value)


def settings_rows(request: Request) -> list[dict[str, Any]]:
    svc = request.app.state.rt.runtime_settings
    return [
        {"key": key, "help": text, "value": as_yaml(svc.value(key)), "file": as_yaml(svc.file_value(key)),
         "overridden": key in svc.overrides, "allowed": key in svc.allowed, "rejected": svc.rejected.get(key),
         "multiline": isinstance(svc.value(key), (list, dict))}
        for key, text in RUNTIME_KEYS.items()
    ]


class AdminController(Controller):
    path = ""
    include_in_schema = False

    def _settings(self, request: Request, status: int = 200, **extra: Any) -> Template:
        rt = request.app.state.rt
        return page(request, "settings.html.j2", status_code=status, rows=settings_rows(request),
                    profiles=profile_names(rt.registry), targets=[t.name for t in rt.settings.notifications.targets],
                    **extra)

    @get("/settings")
    async def settings(self, request: Request) -> Template:
        return self._settings(request)

    @post("/settings/{key:str}")
    async def change(self, request: Request, key: FromPath[str]) -> Response:
        svc = request.app.state.rt.runtime_settings
        if key not in RUNTIME_KEYS:
            raise not_found(f"no runtime setting {key!r}")
        form = await request.form()
        text = str(form.get("value", ""))
        user = request.state.ui_session.user
        try:
            if form.get("reset"):
                await svc.reset(key, actor=user)
            else:
                await svc.change(key, svc.parse(key, text), actor=user)
        except SettingError as exc:
            return self._settings(request, 422, errors={key: str(exc)}, typed={key: text})
        return Redirect(path=f"/settings?saved={key}#{key}", status_code=303)

    @get("/audit")
    async def audit(self, request: Request) -> Template:
        q = request.query_params
        try:
            before = max(0, int(q.get("before") or 0)) or None
        except ValueError:
            before = None
        text = (q.get("q") or "").strip()[:100] or None
        rows = await listing.audit(request.app.state.rt.db, before=before, text=text)
        return page(request, "audit.html.j2", events=[event_out(r) for r in rows], text=text or "",
                    older=rows[-1]["id"] if len(rows) == 100 else None)
