"""The browser's actions through the same code as the operator API's: one copy of each rule.

Registering a host and changing its spec go through the host service
(:class:`~vetting_server.hosts.service.HostService`) as the API's handlers do; starting
a run, cancel/retry/override/release and the report and hold-key downloads are the API's
handlers called in-process, with the session's operator where the API token's would be
(:func:`.auth.ui_guard` sets ``request.state.operator_user``). The validation, the
conflict checks, the audit events and the PXE allowlist refresh are therefore exactly the
API's; errors arrive as the same :class:`~vetting_server.errors.ApiError`
(``extra.field`` names the field), which the pages show beside that field.
"""

from __future__ import annotations

from typing import Any

from litestar import Request

from ..api.auth import operator
from ..api.operator import RunController
from ..api.views import host_out
from ..schemas import (
    ActionRequest,
    HostCreate,
    HostOut,
    HostUpdate,
    OverrideRequest,
    RunCreated,
    RunOut,
    RunStart,
)


class _Controller:
    """Stands in for the controller instance: the handlers reach each other only through it."""

    _action = RunController._action


_SELF = _Controller()
ACTIONS = {"cancel": RunController.cancel, "retry-stage": RunController.retry_stage, "release": RunController.release}


async def register_host(request: Request, body: HostCreate) -> HostOut:
    host, token = await request.app.state.rt.hosts.create(body, (await operator(request))["name"])
    return host_out(host, agent_token=token)


async def update_host(request: Request, host_id: int, body: HostUpdate) -> HostOut:
    return host_out(await request.app.state.rt.hosts.update(host_id, body, (await operator(request))["name"]))


async def start_run(request: Request, body: RunStart) -> RunCreated:
    return await RunController.start_run.fn(_SELF, request, body)


async def run_action(request: Request, run_id: int, action: str, reason: str) -> RunOut:
    return await ACTIONS[action].fn(_SELF, request, run_id, ActionRequest(reason=reason))


async def override(request: Request, run_id: int, flags: dict[str, Any], reason: str) -> RunOut:
    return await RunController.override.fn(_SELF, request, run_id, OverrideRequest(flags=flags, reason=reason))


async def report(request: Request, run_id: int, fmt: str) -> Any:
    return await RunController.report.fn(_SELF, request, run_id, fmt)


async def hold_key(request: Request, run_id: int) -> Any:
    return await RunController.hold_key.fn(_SELF, request, run_id)
